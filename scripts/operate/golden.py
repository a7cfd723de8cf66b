"""Golden sets: requests with the answers a version must give before it may serve.

configs/golden/NAME.jsonl, written by `python -m scripts.build.golden NAME` from the
model's held-out data and committed beside the model configs (so a gate never depends
on regenerated data). One request per line:

    {"content_type": "application/json", "body": "{\"features\": [...]}", "expect": {"label": "benign"}}
    {"content_type": "image/png", "body_base64": "iVBOR...", "expect": {"digit": 3}}
    {"content_type": "application/json", "body": "{\"text\": \"...\"}"}

`expect` holds response fields that must match exactly (the true class); lines
without it (minilm's sentences) are judged by agreement with the current default.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.config.files import ConfigError


@dataclass(frozen=True)
class GoldenRequest:
    content_type: str
    body: bytes
    expect: dict[str, Any] = field(default_factory=dict)


def read_golden(path: Path) -> list[GoldenRequest]:
    """The requests of a golden file; ConfigError names the line that is wrong."""
    requests: list[GoldenRequest] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            body = base64.b64decode(item["body_base64"]) if "body_base64" in item else item["body"].encode()
            requests.append(GoldenRequest(item["content_type"], body, dict(item.get("expect", {}))))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(path, f"line {number}", f"not a golden request ({error!r})",
                              "see the docstring of scripts/operate/golden.py for the format") from None
    if not requests:
        raise ConfigError(path, "-", "holds no requests", "run `python -m scripts.build.golden NAME`")
    return requests
