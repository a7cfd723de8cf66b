"""The rollout's pure parts: the gate's rules, version order, the golden sets, the client's error
types and retry policy (the YAML's rollout: section: tests/unit/test_policies.py). The protocol
itself runs against a real server in tests/e2e/test_rollout.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from scripts.build.golden import golden_line
from scripts.client.rest import (
    SAFE_RETRIES,
    Conflict,
    KeyFile,
    ModelApiDisabled,
    TorchServeError,
    Unauthorized,
)
from scripts.config.files import ConfigError
from scripts.config.policies import RolloutPolicy
from scripts.operate.gate import Answer, judge, percentile
from scripts.operate.golden import GoldenRequest, read_golden
from scripts.operate.registry import Registered, version_key
from scripts.operate.rollout import rollback_target
from scripts.operate.rollout_log import RolloutLog

GOLDEN = [GoldenRequest("application/json", b"{}", {"label": "a"}),
          GoldenRequest("application/json", b"{}", {"label": "b"})]
POLICY = RolloutPolicy(golden=Path("g.jsonl"), p95_ms=100.0, min_accuracy=0.9)


def answers(*labels: str, status: int = 200, seconds: float = 0.01) -> list[Answer]:
    return [Answer(status, seconds, {"label": label}) for label in labels]


def test_the_gate_passes_a_version_that_answers_right_and_fast() -> None:
    verdict = judge(POLICY, GOLDEN, answers("a", "b"), None)
    assert verdict.passed and verdict.figures["accuracy"] == 1.0 and verdict.reasons == []


def test_the_gate_refuses_wrong_answers_errors_and_slowness_and_says_which() -> None:
    assert judge(POLICY, GOLDEN, answers("a", "a"), None).reasons == [
        "accuracy 0.5 is below min_accuracy 0.9"]
    crashed = judge(POLICY, GOLDEN, answers("a", "b", status=503), None)
    assert not crashed.passed and crashed.figures["server_errors"] == 2
    slow = judge(POLICY, GOLDEN, answers("a", "b", seconds=0.5), None)
    assert slow.reasons == ["p95 latency 500.0 ms is over p95_ms 100"]


def test_agreement_is_cosine_for_vectors_and_equality_otherwise() -> None:
    policy = RolloutPolicy(golden=Path("g"), p95_ms=100.0, compare="embedding", min_agreement=0.99)
    golden = [GoldenRequest("application/json", b"{}")] * 2
    ours = [Answer(200, 0.01, {"embedding": [1.0, 0.0]}), Answer(200, 0.01, {"embedding": [0.0, 1.0]})]
    theirs = [Answer(200, 0.01, {"embedding": [1.0, 0.0]}), Answer(200, 0.01, {"embedding": [1.0, 0.0]})]
    verdict = judge(policy, golden, ours, theirs)
    assert verdict.figures["agreement"] == 0.5 and not verdict.passed
    assert judge(policy, golden, ours, ours).passed


def test_percentile_is_a_latency_some_request_saw() -> None:
    assert percentile([0.3, 0.1, 0.2], 95) == 0.3
    assert percentile([float(n) for n in range(1, 101)], 95) == 95.0


def test_versions_order_as_numbers_not_text() -> None:
    assert sorted(["1.10", "2.0", "1.9", "1.0", "nightly"], key=version_key) == [
        "1.0", "1.9", "1.10", "2.0", "nightly"]


def test_a_broken_golden_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('{"content_type": "text/plain", "body": "x"}\n{"body": "no type"}\n')
    with pytest.raises(ConfigError, match="line 2"):
        read_golden(path)


def test_the_gate_reads_what_the_golden_writer_writes(tmp_path: Path) -> None:
    written = [GoldenRequest("application/json", b'{"features": [1.5]}', {"label": "benign"}),
               GoldenRequest("image/png", bytes(range(256)), {"digit": 3}),
               GoldenRequest("text/plain", "naïve".encode())]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(golden_line(r.content_type, r.body, r.expect) + "\n" for r in written))
    assert read_golden(path) == written


def test_the_committed_golden_sets_carry_their_expected_answers() -> None:
    for name, field in (("tabular", "label"), ("digits", "digit")):
        golden = read_golden(Path(f"configs/golden/{name}.jsonl"))
        assert len(golden) == 64 and all(field in request.expect for request in golden)
    assert all(not request.expect for request in read_golden(Path("configs/golden/minilm.jsonl")))


def test_keys_from_the_environment_win_over_the_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps({"inference": {"key": "file-i"}, "management": {"key": "file-m"}}))
    keys = KeyFile.resolve(path, {"TORCHSERVE_MANAGEMENT_KEY": "env-m"})
    assert (keys.inference, keys.management, keys.source) == ("file-i", "env-m", path)
    assert KeyFile.resolve(tmp_path / "absent.json", {}) == KeyFile(source=tmp_path / "absent.json")


def response(status: int, body: dict[str, object]) -> requests.Response:
    answer = requests.Response()
    answer.status_code, answer.url, answer.reason = status, "http://127.0.0.1:8081/models", "Reason"
    answer._content = json.dumps(body).encode()
    return answer


def test_errors_carry_the_servers_message_and_a_type_per_remedy() -> None:
    refused = TorchServeError.from_response(response(400, {
        "code": 400, "type": "InvalidKeyException",
        "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly"}))
    assert isinstance(refused, Unauthorized) and refused.status == 400
    assert isinstance(TorchServeError.from_response(response(405, {"message": "off"})), ModelApiDisabled)
    taken = "Model version 1.0 is already registered"
    conflict = TorchServeError.from_response(response(409, {"message": taken}))
    assert isinstance(conflict, Conflict) and conflict.message == taken
    assert type(TorchServeError.from_response(response(400, {"message": "bad url"}))) is TorchServeError


def test_only_idempotent_calls_are_retried_after_the_server_may_have_seen_them() -> None:
    for method in ("GET", "PUT"):
        assert SAFE_RETRIES.is_retry(method, 503)
    for method in ("POST", "DELETE"):  # register, predict, unregister
        assert not SAFE_RETRIES.is_retry(method, 503)
    assert SAFE_RETRIES.connect and SAFE_RETRIES.connect > 0  # a refused connection never reached it


def test_the_cli_starts_without_importing_torch() -> None:
    probe = "import sys, scripts.operate.tsctl; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_rollback_returns_to_the_previous_default_not_merely_an_older_version(tmp_path: Path) -> None:
    log = RolloutLog(tmp_path / "rollout.jsonl", "tabular")
    log.step("default", version="3.0", previous="2.0")
    log.step("default", version="2.0", previous="3.0", action="rollback")  # 3.0 was bad
    log.step("default", version="4.0", previous="2.0")
    now = Registered("4.0", {v: {} for v in ("2.0", "3.0", "4.0")})
    assert rollback_target(now, log) == "2.0"
    log.step("default", version="2.0", previous="4.0", action="rollback")
    assert rollback_target(Registered("2.0", now.versions), log) is None  # 2.0's own rollout is not logged
    # without a record (another log, or a server started with several versions): the newest older one
    assert rollback_target(now, RolloutLog(tmp_path / "other.jsonl", "tabular")) == "3.0"
    assert rollback_target(Registered("2.0", {"2.0": {}}), log) is None


def test_register_refuses_an_archive_outside_the_store(tmp_path: Path) -> None:
    from scripts.operate.tsctl import store_file

    store = (tmp_path / "store").resolve()
    assert store_file(store / "tabular.mar", store) == store_file(Path("tabular.mar"), store) == "tabular.mar"
    with pytest.raises(ValueError, match="not in the model store"):
        store_file(tmp_path / "elsewhere" / "tabular.mar", store)
