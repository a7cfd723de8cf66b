"""A plain `torchserve --start` (no flags) in a folder with config.properties serves its models."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from scripts.client.rest import TorchServeClient
from scripts.serve.local import write_properties
from scripts.serve.server import torchserve_command, wait_until_ready

pytestmark = pytest.mark.e2e


def test_plain_start_reads_config_properties(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    properties = write_properties(tmp_path, Path("model_store").resolve(), ["tabular.mar"])
    env = {key: value for key, value in os.environ.items() if key != "TS_CONFIG_FILE"}
    env.update(TMPDIR=str(tmp_path / "tmp"), TEMP=str(tmp_path / "tmp"), LOG_LOCATION=str(tmp_path / "logs"))

    def torchserve(*args: str) -> str:
        """Run the launcher; output goes to a file, as the frontend it starts keeps it open."""
        output = tmp_path / "console.log"
        with output.open("w") as console:
            code = subprocess.run(torchserve_command(*args), cwd=tmp_path, env=env, timeout=120,
                                  stdout=console, stderr=subprocess.STDOUT, check=False).returncode
        text = output.read_text()
        assert code == 0, text
        return text

    torchserve("--start")
    try:
        with TorchServeClient(properties["inference_address"],
                              properties["management_address"]) as client:
            wait_until_ready(client, ["tabular"], timeout=120, log_hint=tmp_path / "logs")
            answer = client.predict("tabular", b'{"features": [' + b"1," * 29 + b"1]}",
                                    "application/json")
            assert answer.json()["label"] in ("malignant", "benign")
    finally:
        stopped = torchserve("--stop")
    assert "TorchServe has stopped" in stopped
