"""Golden sets: requests with the answers a version must give before it may serve.

    python -m scripts.operate.golden tabular digits minilm [--limit 64]

writes configs/golden/NAME.jsonl from the model's held-out data (scripts/build/heldout.py),
one request per line:

    {"content_type": "application/json", "body": "{\"features\": [...]}", "expect": {"label": "benign"}}
    {"content_type": "image/png", "body_base64": "iVBOR...", "expect": {"digit": 3}}
    {"content_type": "application/json", "body": "{\"text\": \"...\"}"}

`expect` holds response fields that must match exactly (the true class); lines
without it (minilm's sentences) are judged by agreement with the current default.
The files are committed beside the model configs, so a gate never depends on
regenerated data.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.config.files import ConfigError

logger = logging.getLogger(__name__)
GOLDEN_DIR = Path("configs/golden")


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
        raise ConfigError(path, "-", "holds no requests", "run `python -m scripts.operate.golden NAME`")
    return requests


def golden_line(content_type: str, body: bytes, expect: dict[str, Any]) -> str:
    item: dict[str, Any] = {"content_type": content_type}
    if content_type.startswith(("application/json", "text/")):
        item["body"] = body.decode()
    else:
        item["body_base64"] = base64.b64encode(body).decode()
    if expect:
        item["expect"] = expect
    return json.dumps(item)


def expected_answers(model: str, labels: list[int] | None) -> list[dict[str, Any]]:
    """What each example model must answer for the true class (by its response format)."""
    if labels is None:
        return []
    if model == "tabular":
        from scripts.config.model import CONFIG_DIR, load_spec

        names = load_spec(CONFIG_DIR / "tabular.yaml").model_config["handler"]["class_names"]
        return [{"label": names[label]} for label in labels]
    return [{"digit": label} for label in labels]


def write_golden(model: str, limit: int, directory: Path = GOLDEN_DIR) -> Path:
    from scripts.build.heldout import held_out

    data = held_out(model, limit)
    expects = expected_answers(model, data.labels) or [{}] * len(data.bodies)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{model}.jsonl"
    lines = [golden_line(data.content_type, body, expect) for body, expect in zip(data.bodies, expects,
                                                                                  strict=True)]
    target.write_text("\n".join(lines) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("models", nargs="+", choices=["tabular", "digits", "minilm"])
    parser.add_argument("--limit", type=int, default=64, help="requests per golden set")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for model in args.models:
        logger.info("wrote %s", write_golden(model, args.limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
