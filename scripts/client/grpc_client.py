"""A client for TorchServe's gRPC inference API, over one insecure channel.

    with GrpcInferenceClient(f"127.0.0.1:{grpc_inference_port}") as client:
        client.ping()                                   # '{"status": "Healthy"}'
        client.predict("tabular", body)                 # the handler's answer, as bytes

- Every call has a deadline (`timeout`), so a stuck server cannot hang the caller.
- A failed call raises `GrpcError` with the gRPC status `code` and the server's `message`.
- A request the handler rejects raises `GrpcError` too, although TorchServe 0.12 answers it
  with status OK: its gRPC side drops the per-request status our handlers set and sends
  their error body ({"code": 400, "type": ..., "error": ...}, or OIP's {"error": ...}) as
  the prediction. The client reads that body and maps its HTTP status to a gRPC code with
  the table TorchServe uses when a whole batch fails (400 -> INVALID_ARGUMENT, 5xx -> INTERNAL).
- Token authorization: TorchServe reads the metadata entry `authorization: Bearer <key>`
  (the same inference key as over HTTP) and answers PERMISSION_DENIED without it.
- The stubs are generated at install time from the installed TorchServe's jar
  (`python -m scripts.client.grpc_stubs`) and imported only when a client is made.
"""

from __future__ import annotations

import importlib
import json
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import empty_pb2

STUBS_PACKAGE = "scripts.client.torchserve_grpc"
ERROR_KEYS = frozenset({"code", "type", "error"})  # handlers/errors.py RequestError.body()
_HTTP_TO_GRPC = {  # org.pytorch.serve.util.GRPCUtils.getGRPCStatusCode
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND, 409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED, 416: grpc.StatusCode.OUT_OF_RANGE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class GrpcError(RuntimeError):
    """A failed call: the gRPC status `code` and the server's `message` (its status details)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> GrpcError:
        """An RpcError raised by a unary call is also a grpc.Call that knows its code and details."""
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        return cls(code, details or "")

    @classmethod
    def from_handler_answer(cls, answer: bytes) -> GrpcError | None:
        """The handler's error body as an error, or None when `answer` is not one."""
        if b'"error"' not in answer:  # spares parsing every large answer
            return None
        try:
            document = json.loads(answer)
        except (ValueError, RecursionError):
            return None
        if not (isinstance(document, dict) and set(document) <= ERROR_KEYS
                and isinstance(document.get("error"), str)):
            return None
        return cls(grpc_code(document.get("code")), document["error"])


def grpc_code(http_status: object) -> grpc.StatusCode:
    """The gRPC code TorchServe would give this HTTP status."""
    if not isinstance(http_status, int):  # OIP error bodies carry no status
        return grpc.StatusCode.UNKNOWN
    if http_status in _HTTP_TO_GRPC:
        return _HTTP_TO_GRPC[http_status]
    return grpc.StatusCode.FAILED_PRECONDITION if 400 <= http_status < 500 else grpc.StatusCode.INTERNAL


def load_stubs(name: str) -> ModuleType:
    """Import one generated module (e.g. "inference_pb2"); explain how to generate them if missing."""
    try:
        return importlib.import_module(f"{STUBS_PACKAGE}.{name}")
    except ModuleNotFoundError as error:
        if error.name is None or not error.name.startswith(STUBS_PACKAGE):
            raise
        raise ImportError(
            f"the TorchServe gRPC stubs ({STUBS_PACKAGE}) are not generated: run `make install` "
            "or `python -m scripts.client.grpc_stubs`"
        ) from error


class GrpcInferenceClient:
    """TorchServe's inference API over gRPC (default port 7070); use it as a context manager."""

    def __init__(self, address: str = "127.0.0.1:7070", token: str | None = None,
                 timeout: float = 30.0) -> None:
        self._messages = load_stubs("inference_pb2")
        services = load_stubs("inference_pb2_grpc")
        self.address, self.timeout = address, timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(address)
        self._stub = services.InferenceAPIsServiceStub(self._channel)

    def ping(self) -> str:
        """The server's health as TorchServe words it: a JSON document such as {"status": "Healthy"}."""
        return str(self._call(self._stub.Ping, empty_pb2.Empty()).health)

    def predict(self, model: str, body: bytes, version: str | None = None, field: str = "body") -> bytes:
        """The model's answer to `body`, as the handler wrote it; a rejected request raises GrpcError.

        TorchServe hands each entry of the request's input map to the handler as one
        request field; our handlers read a raw body from the field "body". No content
        type travels with it, so JSON arrives as bytes and the handler parses it.
        """
        request = self._messages.PredictionsRequest(model_name=model, model_version=version or "",
                                                    input={field: body})
        answer = bytes(self._call(self._stub.Predictions, request).prediction)
        error = GrpcError.from_handler_answer(answer)
        if error is not None:
            raise error
        return answer

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: object) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise GrpcError.from_rpc_error(error) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcInferenceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
