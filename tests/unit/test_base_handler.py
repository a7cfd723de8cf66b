"""The base class contract, driven through TorchServe's real Context with fixture handlers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handlers import Input, ModelHandler
from handlers.digits import DigitsHandler
from handlers.errors import HandlerContractError
from handlers.tabular import TabularHandler
from scripts.harness import LocalModel, RawRequest
from tests.fixtures.handlers import EchoHandler

CONFIG = {"batchSize": 8, "handler": {}}


@pytest.fixture()
def echo(tmp_path: Path) -> LocalModel:
    return LocalModel(EchoHandler(), "echo", tmp_path, CONFIG)


def test_bad_items_get_their_own_status_and_good_items_their_answers(echo: LocalModel) -> None:
    results = echo.run([
        RawRequest(b"{not json"),                 # 0: malformed
        RawRequest.json({"x": 1.5}),              # 1: good, single
        RawRequest.json({"y": 1}),                # 2: missing field
        RawRequest.json({"x": [1, 2, 3]}),        # 3: good, three instances
        RawRequest(b""),                          # 4: empty
    ])
    assert [r.status for r in results] == [400, 200, 400, 200, 400]
    assert results[1].json() == 3.0
    assert results[3].json() == [2.0, 4.0, 6.0]
    assert "not valid JSON" in results[0].json()["error"]
    assert "expected" in results[2].json()["error"]
    assert all(r.headers.get("content-type") == "application/json" for r in results)


def test_every_answer_good_or_bad_names_the_version_that_produced_it(tmp_path: Path) -> None:
    model = LocalModel(EchoHandler(), "echo", tmp_path, CONFIG, version="7.3")
    results = model.run([RawRequest.json({"x": 1.0}), RawRequest(b"{not json")])
    assert [r.status for r in results] == [200, 400]
    assert [r.headers.get("X-Model-Version") for r in results] == ["7.3", "7.3"]


def test_a_bug_in_preprocess_is_a_500_for_that_request_only(echo: LocalModel) -> None:
    results = echo.run([RawRequest.json({"x": EchoHandler.BUG}), RawRequest.json({"x": 2})])
    assert [r.status for r in results] == [500, 200]
    assert "KeyError" not in results[0].body and "Traceback" not in results[0].body
    assert results[1].json() == 4.0


def test_a_bug_in_postprocess_is_a_500_for_that_request_only(echo: LocalModel) -> None:
    echo.handler.postprocess_fails_on = 4.0
    results = echo.run([RawRequest.json({"x": 2}), RawRequest.json({"x": 3})])
    assert [r.status for r in results] == [500, 200]
    assert results[1].json() == 6.0


def test_a_failed_forward_pass_fails_its_requests_but_keeps_decode_errors(echo: LocalModel) -> None:
    echo.handler.fail_inference = RuntimeError("kernel exploded")
    results = echo.run([RawRequest.json({"x": 1}), RawRequest(b"nope"), RawRequest.json({"x": 2})])
    assert [r.status for r in results] == [500, 400, 500]
    assert "kernel exploded" not in results[0].body


def test_out_of_memory_in_the_forward_pass_is_507(echo: LocalModel) -> None:
    echo.handler.fail_inference = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")
    results = echo.run([RawRequest.json({"x": 1})])
    assert results[0].status == 507


def test_wrong_output_count_is_logged_with_both_numbers_and_fails_the_batch(
    echo: LocalModel, caplog: pytest.LogCaptureFixture
) -> None:
    echo.handler.drop_rows = 1
    results = echo.run([RawRequest.json({"x": [1, 2]}), RawRequest(b"bad"), RawRequest.json({"x": 3})])
    assert [r.status for r in results] == [500, 400, 500]
    assert "returned 2 rows for 3 instances" in caplog.text
    assert caplog.text.count("returned 2 rows for 3 instances") == 1  # logged once, not per request


def test_non_finite_output_is_that_requests_400_with_valid_json(echo: LocalModel) -> None:
    results = echo.run([RawRequest.json({"x": 1e308}), RawRequest.json({"x": 2})])
    assert [r.status for r in results] == [400, 200]
    assert "not finite" in results[0].json()["error"] and results[1].json() == 4.0


def test_json_document_that_is_a_string_is_not_parsed_twice(echo: LocalModel) -> None:
    # ... and a body nested too deeply for any JSON parser is a 400, not a crash.
    results = echo.run([RawRequest.json('{"x": 1}'), RawRequest(b"[" * 100_000, "application/json")])
    assert [r.status for r in results] == [400, 400]


def test_unknown_handler_option_fails_at_initialize(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown option"):
        LocalModel(EchoHandler(), "echo", tmp_path, {"handler": {"colour": "blue"}})


def test_cpu_is_chosen_without_a_gpu_id(echo: LocalModel) -> None:
    assert echo.handler.device == torch.device("cpu")


def test_network_inputs_default_to_a_numeric_input_and_a_declared_one_stays(tmp_path: Path) -> None:
    assert EchoHandler.NETWORK_INPUTS == {"x": ()}  # Echo declares only INPUT = Input("x", NUMBER_TYPES)
    assert TabularHandler.NETWORK_INPUTS == {"features": (30,)}  # from its INPUT
    assert DigitsHandler.NETWORK_INPUTS == {"image": (1, 8, 8)}  # bytes in: declared

    class NoNetworkInputs(ModelHandler):  # text in: the network's inputs cannot be read from INPUT
        INPUT = Input("text", frozenset({"BYTES"}))

    assert not hasattr(NoNetworkInputs, "NETWORK_INPUTS")
    with pytest.raises(HandlerContractError, match="must declare NETWORK_INPUTS"):
        LocalModel(NoNetworkInputs(), "texts", tmp_path, CONFIG)
