"""The step log of rollouts, rollbacks and recycles: one JSON line per step (logs/rollout.jsonl).

It is both the audit trail and a memory: rollback reads which version a rollout
replaced, so `rollback` goes back to the previous default, not merely to an older one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class RolloutLog:
    """One JSON line per step, appended to `path` (and logged for the person watching)."""

    path: Path
    model: str

    def previous_default(self, current: str | None) -> str | None:
        """What was the default before a rollout made `current` the default (by this log's last
        such switch; switches made by rollback are skipped, so rollback twice goes back twice)."""
        switches = [record for record in self.records() if record.get("step") == "default"
                    and record.get("version") == current and record.get("action") != "rollback"]
        return str(switches[-1]["previous"]) if switches and switches[-1].get("previous") else None

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [record for record in map(json.loads, lines) if record.get("model") == self.model]

    def step(self, step: str, **fields: Any) -> dict[str, Any]:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                  "model": self.model, "step": step, **fields}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        logger.info("%-10s %s", step, " ".join(f"{k}={v}" for k, v in fields.items()))
        return record
