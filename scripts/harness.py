"""Run a handler without a server, through TorchServe's own Context and request parsing.

Used by the unit tests and for debugging one request or a batch:

    python -m scripts.harness predict --model tabular --file req.json [--file other.json ...]
        [--content-type application/json] [--mar model_store/tabular.mar]

`--model` names a config (configs/models/NAME.yaml, or a path to one); `--mar`
runs a built archive instead: its weights, its model-config and its handler
module (the `handlers` package it imports is the one importable here).

The model directory is laid out as the archive would be, the context is a real
`ts.context.Context` with the archive's manifest, and each raw request goes
through TorchServe's `Service.retrieve_data_for_inference`, with bodies decoded
as TorchServe's worker decodes them (JSON for exactly application/json, str for
text/*, bytes otherwise). Forms arrive as TorchServe's frontend sends them: one
parameter per field, files with their content type, plain fields without.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import yaml
from ts.context import Context
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.service import Service

from handlers.base import ModelHandler
from handlers.modules import find_handler_class, handler_class
from scripts.config.model import CONFIG_DIR, METRICS_CONFIG, load_spec

URLENCODED = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class FormField:
    """One field of a multipart form: a file has a content type, a plain field has none."""

    name: str
    value: bytes
    content_type: str | None = None


@dataclass(frozen=True)
class RawRequest:
    """One HTTP request as a client sends it: a raw body, or the fields of a form."""

    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    form: tuple[FormField, ...] = ()

    @classmethod
    def json(cls, document: Any) -> RawRequest:
        return cls(json.dumps(document).encode(), "application/json")

    @classmethod
    def multipart(cls, *fields: FormField) -> RawRequest:
        return cls(b"", "multipart/form-data; boundary=harness", form=tuple(fields))


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
    if request.form:
        parameters = [(f.name, f.value, f.content_type or "") for f in request.form]
    elif request.content_type.startswith(URLENCODED):  # TorchServe's frontend parses these forms
        pairs = parse_qsl(request.body.decode("latin-1"), keep_blank_values=True)
        parameters = [(name, value.encode(), "") for name, value in pairs]
    else:
        parameters = [("body", request.body, request.content_type.split(";")[0].strip())]
    return {
        "requestId": f"req-{number}".encode(),
        "headers": [{"name": k.encode(), "value": v.encode()} for k, v in headers.items()],
        "parameters": [
            {"name": name, "contentType": content_type, "value": worker_value(value, content_type)}
            for name, value, content_type in parameters
        ],
    }


class LocalModel:
    """A handler initialised through a real Context, answering batches of raw requests."""

    def __init__(
        self, handler: ModelHandler, name: str, model_dir: Path, model_config: Mapping[str, Any],
        version: str = "1.0", gpu: int | None = None,
    ) -> None:
        """`gpu`: the GPU id TorchServe would give this worker (`gpu_id`); None for a CPU worker."""
        manifest = {"model": {"modelName": name, "modelVersion": version}}
        metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_CONFIG))
        metrics.initialize_cache()
        self.context = Context(
            name, str(model_dir), manifest, model_config.get("batchSize", 1), gpu, "0.12.0",
            metrics=metrics, model_yaml_config=dict(model_config),
        )
        self.handler = handler
        self.handler.initialize(self.context)
        self._staging: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def from_config(cls, path: Path, handler_options: Mapping[str, Any] | None = None,
                    store: Path = Path("model_store"), gpu: int | None = None,
                    device: str = "cpu") -> LocalModel:
        """Lay out the config's files as its archive would, then initialise its handler.

        Files the archive step derives (the ONNX export) come from the built archive in `store`:
        exporting and checking them again would take minutes. A handler that needs one the store
        lacks fails at load, naming it (`make archive` builds them).
        """
        spec = load_spec(path, device=device)  # device: the YAML's profile (gpu: its overlay)
        staging = tempfile.TemporaryDirectory(prefix=f"harness-{spec.name}-")
        for file in spec.files:
            shutil.copyfile(file, Path(staging.name) / file.name)
        built = store / f"{spec.name}.mar"
        if built.is_file():
            with zipfile.ZipFile(built) as archive:
                for name in archive.namelist():
                    if name.endswith(".onnx"):
                        archive.extract(name, staging.name)
        model_config = dict(spec.model_config)
        if handler_options is not None:
            model_config["handler"] = {**model_config.get("handler", {}), **handler_options}
        model = cls(handler_class(spec.handler)(), spec.name, Path(staging.name), model_config, spec.version,
                    gpu)
        model._staging = staging
        return model

    @classmethod
    def from_mar(cls, path: Path) -> LocalModel:
        """Extract a `.mar` and initialise the handler module it names, with its model-config."""
        staging = tempfile.TemporaryDirectory(prefix=f"harness-{path.stem}-")
        root = Path(staging.name)
        with zipfile.ZipFile(path) as archive:
            archive.extractall(root)
        model = json.loads((root / "MAR-INF" / "MANIFEST.json").read_text())["model"]
        config_file = model.get("configFile")
        model_config = yaml.safe_load((root / config_file).read_text()) if config_file else {}
        module_spec = importlib.util.spec_from_file_location(f"mar_{path.stem}", root / model["handler"])
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"{path}: cannot import its handler {model['handler']}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # dataclasses look their module up while defining
        module_spec.loader.exec_module(module)
        handler = find_handler_class(module, Path(model["handler"]))()
        loaded = cls(handler, model["modelName"], root, model_config or {}, model.get("modelVersion", ""))
        loaded._staging = staging
        return loaded

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
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="send request files as one batch, print each result")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a model name (configs/models/NAME.yaml) or a config path")
    source.add_argument("--mar", type=Path, help="a built archive, e.g. model_store/tabular.mar")
    predict.add_argument("--file", type=Path, action="append", required=True,
                         help="a request body; repeat to send a batch")
    predict.add_argument("--content-type", default="application/json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    requests = [RawRequest(path.read_bytes(), args.content_type) for path in args.file]
    with _open_model(args) as model:
        results = model.run(requests)
    for path, result in zip(args.file, results, strict=True):
        print(f"{path}: {result.status} {result.headers.get('content-type', '')}")
        print(f"  {result.body}")
    return 0 if all(result.status == 200 for result in results) else 1


def _open_model(args: argparse.Namespace) -> LocalModel:
    if args.mar is not None:
        return LocalModel.from_mar(args.mar)
    config = Path(args.model)
    if not config.suffix:
        config = CONFIG_DIR / f"{args.model}.yaml"
    return LocalModel.from_config(config)


if __name__ == "__main__":
    raise SystemExit(main())
