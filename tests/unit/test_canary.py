"""`tsctl gate`'s parts that need no server: where the token comes from, the CLI, the verdict text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.operate.canary import describe, inference_keys, read_token
from scripts.operate.tsctl import main, parser

KEY_FILE = {"management": {"key": "m-key"}, "inference": {"key": "i-key"}, "API": {"key": "a-key"}}


def test_a_token_file_is_the_key_alone_or_torchserves_key_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    assert read_token(secret).inference == "s3cret"
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps(KEY_FILE))
    assert read_token(key_file).inference == "i-key" and read_token(key_file).source == key_file
    for bad in ("", "two words"):
        secret.write_text(bad)
        with pytest.raises(ValueError, match="holds no token"):
            read_token(secret)


def test_the_token_file_beats_the_environment_which_beats_a_local_key_file(tmp_path: Path) -> None:
    secret, key_file = tmp_path / "secret", tmp_path / "key_file.json"
    secret.write_text("from-file")
    key_file.write_text(json.dumps(KEY_FILE))
    environ = {"TORCHSERVE_INFERENCE_KEY": "from-env"}
    assert inference_keys(secret, key_file, environ).inference == "from-file"
    assert inference_keys(None, key_file, environ).inference == "from-env"
    assert inference_keys(None, key_file, {}).inference == "i-key"
    assert inference_keys(None, None, {}).inference is None  # --url given: no local key travels


def test_gate_takes_json_after_the_command_too() -> None:
    args = parser().parse_args(["gate", "tabular", "--url", "http://h:8080", "--json"])
    assert args.json and args.url == "http://h:8080" and args.version is None
    assert parser().parse_args(["--json", "gate", "tabular"]).json
    assert not parser().parse_args(["gate", "tabular"]).json


def test_without_url_or_properties_the_gate_says_what_to_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ts-config", "/nonexistent.properties", "--json", "gate", "tabular"]) == 2
    assert "pass --url" in json.loads(capsys.readouterr().out)["error"]


def test_the_verdict_reads_as_one_line_then_reasons() -> None:
    text = describe({"model": "tabular", "version": "2.0", "url": "http://h:8080", "passed": False,
                     "figures": {"requests": 64, "accuracy": 0.06},
                     "reasons": ["accuracy 0.06 is below min_accuracy 0.9"]})
    assert text.splitlines() == ["tabular 2.0 at http://h:8080: refused the golden-set gate",
                                 "  accuracy 0.06 is below min_accuracy 0.9", "  requests=64 accuracy=0.06"]
