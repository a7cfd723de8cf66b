"""Run a handler without a server, through TorchServe's own Context and request parsing.

Used by the unit tests and for debugging:

    python -m scripts.harness configs/models/tabular.yaml --file req.json \
        [--content-type application/json]

The model directory is laid out as the archive would be (the config's files at
its root), the context is a real `ts.context.Context`, and each raw request goes
through TorchServe's `Service.retrieve_data_for_inference`, with bodies decoded
as TorchServe's worker decodes them (JSON for exactly application/json, str for
text/*, bytes otherwise).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ts.context import Context
from ts.service import Service

from handlers.base import ModelHandler
from scripts.model_config import handler_class, load_spec


@dataclass(frozen=True)
class RawRequest:
    """One HTTP request as a client sends it."""

    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, document: Any) -> RawRequest:
        return cls(json.dumps(document).encode(), "application/json")


@dataclass(frozen=True)
class Result:
    """What the client would get back for one request."""

    status: int
    headers: Mapping[str, str]
    body: Any

    def json(self) -> Any:
        return json.loads(self.body)


def worker_value(body: bytes, content_type: str) -> Any:
    """Decode a body as TorchServe's worker does (ts/protocol/otf_message_handler.py)."""
    try:
        if content_type == "application/json":
            return json.loads(body.decode("utf-8"))
        if content_type.startswith("text"):
            return body.decode("utf-8")
    except (ValueError, RecursionError):
        pass  # TorchServe forwards the encoded payload
    return body


def to_wire(number: int, request: RawRequest) -> dict[str, Any]:
    """The request in the frame format TorchServe's frontend sends its workers."""
    headers = {"Content-Type": request.content_type, **request.headers}
    return {
        "requestId": f"req-{number}".encode(),
        "headers": [{"name": k.encode(), "value": v.encode()} for k, v in headers.items()],
        "parameters": [{
            "name": "body",
            "contentType": request.content_type,
            "value": worker_value(request.body, request.content_type),
        }],
    }


class LocalModel:
    """A handler initialised through a real Context, answering batches of raw requests."""

    def __init__(
        self, handler: ModelHandler, name: str, model_dir: Path, model_config: Mapping[str, Any]
    ) -> None:
        self.context = Context(
            name, str(model_dir), {"model": {"modelName": name}},
            model_config.get("batchSize", 1), None, "0.12.0", model_yaml_config=dict(model_config),
        )
        self.handler = handler
        self.handler.initialize(self.context)
        self._staging: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def from_config(cls, path: Path, handler_options: Mapping[str, Any] | None = None) -> LocalModel:
        """Lay out the config's files as its archive would, then initialise its handler."""
        spec = load_spec(path)
        staging = tempfile.TemporaryDirectory(prefix=f"harness-{spec.name}-")
        for file in spec.files:
            shutil.copyfile(file, Path(staging.name) / file.name)
        model_config = dict(spec.model_config)
        if handler_options is not None:
            model_config["handler"] = {**model_config.get("handler", {}), **handler_options}
        model = cls(handler_class(spec.handler)(), spec.name, Path(staging.name), model_config)
        model._staging = staging
        return model

    def run(self, requests: Sequence[RawRequest]) -> list[Result]:
        """Send `requests` as one TorchServe batch; one Result per request, in order."""
        batch = [to_wire(number, request) for number, request in enumerate(requests)]
        headers, input_batch, request_ids = Service.retrieve_data_for_inference(batch)
        self.context.request_ids = request_ids
        self.context.request_processor = headers
        outputs = self.handler.handle(input_batch, self.context)
        if len(outputs) != len(requests):
            raise AssertionError(f"{len(requests)} requests in, {len(outputs)} responses out")
        results = []
        for index, output in enumerate(outputs):
            status, _ = self.context.get_response_status(index)
            results.append(Result(status or 200, dict(self.context.get_response_headers(index)), output))
        return results

    def close(self) -> None:
        if self._staging is not None:
            self._staging.cleanup()

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("config", type=Path, help="configs/models/NAME.yaml")
    parser.add_argument("--file", type=Path, action="append", required=True,
                        help="a request body; repeat to send a batch")
    parser.add_argument("--content-type", default="application/json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    requests = [RawRequest(path.read_bytes(), args.content_type) for path in args.file]
    with LocalModel.from_config(args.config) as model:
        for path, result in zip(args.file, model.run(requests), strict=True):
            print(f"{path}: {result.status} {result.body}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
