"""`tsctl gate --url`: the golden-set gate against a real TorchServe reached only by URL and token.

One server with token authorization on serves tabular 1.0 (the default) and a
2.0 whose class names are swapped, built by the real archive step: wrong on
purpose, as a bad canary would be. The gate is driven as a Kubernetes Job would
drive it: the CLI, a URL, a token file or variable, and the exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from scripts.build.store import read_archive
from scripts.client.rest import KeyFile
from scripts.serve.local import LocalServer, free_port
from tests.e2e.cli import run_tsctl
from tests.e2e.versions import TABULAR_YAML, tabular_version

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    tmp = tmp_path_factory.mktemp("gate")
    store = tmp / "store"
    store.mkdir()
    shutil.copyfile(Path("model_store/tabular.mar"), store / "tabular.mar")
    tabular_version(tmp, tmp / "built", "2.0", swap_labels=True)  # wrong on purpose
    shutil.copyfile(tmp / "built" / "tabular.mar", store / "tabular-2.0.mar")
    extra = {"disable_token_authorization": "false", "enable_model_api": "true"}
    with LocalServer.start(tmp / "server", store, ["tabular"], extra=extra) as instance:
        with instance.client() as client:
            client.register("tabular-2.0.mar")
            versions = {v["modelVersion"]: v for v in client.describe("tabular", "all")}
        assert sorted(versions) == ["1.0", "2.0"] and read_archive(store / "tabular.mar").version == "1.0"
        yield instance


def inference_key(server: LocalServer) -> str:
    return str(KeyFile.read(server.key_file).inference)


def gate(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a Job runs it: from the repository root, no local server files, only what is passed."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TORCHSERVE_")}
    if token is not None:
        env["TORCHSERVE_INFERENCE_KEY"] = token
    return run_tsctl("--ts-config", "/nonexistent.properties", *args, env=env, timeout=300)


def test_a_good_version_passes_and_a_label_swapped_one_is_refused(server: LocalServer,
                                                                  tmp_path: Path) -> None:
    secret = tmp_path / "inference-key"  # as a Kubernetes Secret is mounted: the key alone
    secret.write_text(inference_key(server) + "\n")
    good = gate("gate", "tabular", "--version", "1.0", "--url", server.inference_url,
                "--token-file", str(secret))
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith(f"tabular 1.0 at {server.inference_url}: passed"), good.stdout

    bad = gate("--json", "gate", "tabular", "--version", "2.0", "--url", server.inference_url,
               token=inference_key(server))
    assert bad.returncode == 1, bad.stderr
    verdict = json.loads(bad.stdout)
    assert verdict["passed"] is False and verdict["version"] == "2.0"
    assert verdict["figures"]["requests"] == 64 and verdict["figures"]["client_errors"] == 0
    assert verdict["figures"]["accuracy"] < 0.5 and "below min_accuracy" in verdict["reasons"][0]

    default = gate("gate", "tabular", "--url", server.inference_url, "--token-file", str(server.key_file),
                   "--json")  # the default version (1.0), the key from TorchServe's own key_file.json
    assert default.returncode == 0, default.stderr
    assert json.loads(default.stdout)["passed"] is True and json.loads(default.stdout)["version"] is None


def test_a_policy_that_compares_asks_the_default_as_baseline(server: LocalServer, tmp_path: Path) -> None:
    config = yaml.safe_load(TABULAR_YAML.read_text())  # the model's YAML, its gate comparing labels
    config["rollout"] = {"golden": "configs/golden/tabular.jsonl", "compare": "label", "min_agreement": 0.9,
                         "p95_ms": 1000}
    policy = tmp_path / "tabular.yaml"
    policy.write_text(yaml.safe_dump(config))
    token = inference_key(server)
    swapped = gate("--json", "gate", "tabular", "--version", "2.0", "--url", server.inference_url,
                   "--policy", str(policy), token=token)
    assert swapped.returncode == 1, swapped.stderr
    verdict = json.loads(swapped.stdout)
    assert verdict["figures"]["agreement"] < 0.5
    assert "agreement with the default (label)" in verdict["reasons"][0]

    same = gate("gate", "tabular", "--version", "1.0", "--url", server.inference_url,
                "--baseline-url", server.inference_url, "--policy", str(policy), token=token)
    assert same.returncode == 0 and "agreement=1.0" in same.stdout, same.stderr

    itself = gate("gate", "tabular", "--url", server.inference_url, "--policy", str(policy), token=token)
    assert itself.returncode == 2 and "compared with itself" in itself.stderr


def test_token_reachability_and_missing_versions_have_their_own_exit_codes(server: LocalServer,
                                                                           tmp_path: Path) -> None:
    url = server.inference_url
    wrong = gate("gate", "tabular", "--url", url, token="not-the-key")
    assert wrong.returncode == 4 and "--token-file" in wrong.stderr, wrong.stderr
    none = gate("gate", "tabular", "--url", url)  # a remote gate never picks up a local key_file.json
    assert none.returncode == 4, none.stderr

    token = inference_key(server)
    nobody = gate("gate", "tabular", "--url", f"http://127.0.0.1:{free_port()}", token=token)
    assert nobody.returncode == 3 and "cannot reach TorchServe's inference API" in nobody.stderr
    missing = gate("--json", "gate", "tabular", "--version", "9.9", "--url", url, token=token)
    assert missing.returncode == 3 and "not served there" in json.loads(missing.stdout)["error"]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert gate("gate", "tabular", "--url", url, "--token-file", str(empty)).returncode == 2
