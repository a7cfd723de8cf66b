"""Write the golden sets: held-out requests with the answers a version must give before it may serve.

    python -m scripts.build.golden tabular digits minilm [--limit 64]

writes configs/golden/NAME.jsonl from the model's held-out data (scripts/build/heldout.py),
one request per line, in the format the gate reads (documented in scripts/operate/golden.py).
`expect` holds the true class where the data has one (tabular's label, digits' digit);
minilm's sentences have none, so the gate judges them by agreement with the current default.
The files are committed beside the model configs, so a gate never depends on
regenerated data; this runs only when a model's held-out data or answer format changes.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
from pathlib import Path
from typing import Any

from scripts.build.heldout import held_out
from scripts.config.model import CONFIG_DIR, load_spec

logger = logging.getLogger(__name__)
GOLDEN_DIR = Path("configs/golden")


def golden_line(content_type: str, body: bytes, expect: dict[str, Any]) -> str:
    """One request as a JSON line: text bodies as text, others in base64."""
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
        names = load_spec(CONFIG_DIR / "tabular.yaml").model_config["handler"]["class_names"]
        return [{"label": names[label]} for label in labels]
    return [{"digit": label} for label in labels]


def write_golden(model: str, limit: int, directory: Path = GOLDEN_DIR) -> Path:
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
