"""Where a measuring command leaves its output: results.json (the data) and report.md (the table)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def save_results(out: Path, data: Any, report: str, started: float) -> None:
    """Write both files into `out`, print the report and how long the run took."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "report.md").write_text(report)
    print(report)
    print(f"wrote {out}/ in {time.monotonic() - started:.0f}s")
