"""docs/adding-a-model.md cannot rot: its skeleton is copied out verbatim, trained, archived and served.

Each code block the page marks with `<!-- file: PATH -->` is written to PATH in a
scratch copy of the repository's `handlers/` package, then the page's steps run:
train, `scripts.build.archive`, a real TorchServe, and one request in each shape.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_iris

from scripts.serve.local import LocalServer

pytestmark = pytest.mark.e2e
PAGE = Path("docs/adding-a-model.md")
MARKED_BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\n```\w*\n(?P<code>.*?)\n```", re.DOTALL)
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]  # one of each species


def page_files() -> dict[str, str]:
    return {match["path"]: match["code"] + "\n" for match in MARKED_BLOCK.finditer(PAGE.read_text())}


def run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}  # `scripts` from here; `handlers` from cwd first
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, Path]]:
    root = tmp_path_factory.mktemp("adding-a-model")
    shutil.copytree("handlers", root / "handlers", ignore=shutil.ignore_patterns("__pycache__"))
    files = page_files()
    assert set(files) == {"handlers/iris.py", "configs/models/iris.yaml", "train_iris.py"}, files.keys()
    for path, code in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(code)
    run([sys.executable, "train_iris.py"], root)
    run([sys.executable, "-m", "scripts.build.archive", "configs/models/iris.yaml", "--store", "model_store"],
        root)
    with LocalServer.start(root / "server", root / "model_store", ["iris"]) as server:
        yield server, root


def expected_species(root: Path) -> list[str]:
    """The trained network's answers, computed in-process from the saved weights."""
    weights = load_file(str(root / "build/weights/iris/iris.safetensors"))
    network = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    network.load_state_dict(weights)
    with torch.inference_mode():
        indices = network(torch.tensor(ROWS)).argmax(dim=1).tolist()
    return [str(load_iris().target_names[index]) for index in indices]


def post(server: LocalServer, path: str, document: object) -> requests.Response:
    return requests.post(server.inference_url + path, json=document, timeout=60)


def test_the_skeleton_answers_in_all_three_request_shapes(iris: tuple[LocalServer, Path]) -> None:
    server, root = iris
    expected = expected_species(root)
    assert sorted(expected) == ["setosa", "versicolor", "virginica"]  # a trained model, not a constant

    native = post(server, "/predictions/iris", {"measurements": ROWS[0]})
    assert native.status_code == 200, native.text
    assert native.json()["species"] == expected[0]
    assert sum(native.json()["probabilities"]) == pytest.approx(1.0, abs=1e-5)

    v1 = post(server, "/v1/models/iris:predict", {"instances": ROWS})
    assert v1.status_code == 200, v1.text
    assert [prediction["species"] for prediction in v1.json()["predictions"]] == expected

    oip = post(server, "/v2/models/iris/infer", {"inputs": [
        {"name": "measurements", "shape": [3, 4], "datatype": "FP32", "data": ROWS}]})
    assert oip.status_code == 200, oip.text
    outputs = {tensor["name"]: tensor for tensor in oip.json()["outputs"]}
    assert outputs["species"]["data"] == expected and outputs["species"]["datatype"] == "BYTES"
    assert outputs["probabilities"]["shape"] == [3, 3]


def test_the_skeleton_refuses_a_bad_request_as_the_page_says(iris: tuple[LocalServer, Path]) -> None:
    server, _ = iris
    answer = post(server, "/predictions/iris", {"measurements": [1, 2]})
    assert answer.status_code == 400
    assert answer.json()["error"] == "'measurements' must hold exactly 4 numbers, got 2 values"
    assert answer.json()["error"] in PAGE.read_text()
