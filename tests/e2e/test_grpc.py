"""End to end over gRPC: the inference API through scripts/client/grpc_client.py, against the HTTP answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from scripts.client.grpc_client import GrpcError, GrpcInferenceClient, load_stubs
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e
TABULAR_BODY = Path("build/examples/tabular.json")


@pytest.fixture(scope="module")
def address(server: Server) -> str:
    return f"127.0.0.1:{server.properties['grpc_inference_port']}"


@pytest.fixture()
def client(address: str) -> Iterator[GrpcInferenceClient]:
    with GrpcInferenceClient(address, timeout=60) as instance:
        yield instance


def test_ping_reports_healthy(client: GrpcInferenceClient) -> None:
    assert json.loads(client.ping())["status"] == "Healthy"


def test_tabular_answers_as_over_http(server: Server, client: GrpcInferenceClient) -> None:
    body = TABULAR_BODY.read_bytes()
    with server.client() as http:
        over_http = http.predict("tabular", body, "application/json")
    assert over_http.status_code == 200
    assert client.predict("tabular", body) == over_http.content
    assert json.loads(client.predict("tabular", body))["class_index"] in (0, 1)


def test_torchserve_reports_a_rejected_request_as_ok(address: str) -> None:
    """Why the client reads the answer: TorchServe's gRPC side drops the status our handler set."""
    messages, services = load_stubs("inference_pb2"), load_stubs("inference_pb2_grpc")
    with grpc.insecure_channel(address) as channel:
        stub = services.InferenceAPIsServiceStub(channel)
        request = messages.PredictionsRequest(model_name="tabular", input={"body": b"{not json"})
        answer = json.loads(stub.Predictions(request, timeout=60).prediction)
    assert answer["code"] == 400
    assert answer["type"] == "InvalidInput"


def test_malformed_body_is_invalid_argument_and_the_worker_goes_on(client: GrpcInferenceClient) -> None:
    with pytest.raises(GrpcError) as raised:
        client.predict("tabular", b"{not json")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not valid JSON" in raised.value.message
    with pytest.raises(GrpcError, match="must hold exactly 30 numbers") as raised:
        client.predict("tabular", json.dumps({"features": [1.0, 2.0]}).encode())
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "class_index" in json.loads(client.predict("tabular", TABULAR_BODY.read_bytes()))


def test_unknown_model_is_internal_naming_the_model(client: GrpcInferenceClient) -> None:
    """TorchServe 0.12 answers INTERNAL, not NOT_FOUND (InferenceImpl.prediction), for a missing model."""
    with pytest.raises(GrpcError) as raised:
        client.predict("no_such_model", b"{}")
    assert raised.value.code == grpc.StatusCode.INTERNAL
    assert "Model not found: no_such_model" in raised.value.message


def test_unknown_version_is_internal_naming_the_version(client: GrpcInferenceClient) -> None:
    with pytest.raises(GrpcError) as raised:
        client.predict("tabular", TABULAR_BODY.read_bytes(), version="9.9")
    assert raised.value.code == grpc.StatusCode.INTERNAL
    assert "9.9 does not exist" in raised.value.message
