"""What the archive step derives from a model's float weights, and the gates it must pass.

Called by `scripts/build/archive.py` on the staged archive folder, before the archive is written:

    backend: onnx    export the network to ONNX (dynamic batch axis; sequence axis for
                     text), then run the held-out requests through the handler twice,
                     PyTorch and ONNX Runtime; refuse if any output differs by > 1e-4.
    quantize: int8   run the held-out requests through the float and the int8 handler;
                     refuse if the loss passes `max_quantization_loss` (accuracy points
                     for a classifier, 1 - mean cosine for an embedding).

Both comparisons drive the handler itself (decode, collate, engine), so what is
measured is what the worker will serve. The figures go into the archive as
`optimization.json`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from handlers.base import ModelHandler
from handlers.options import OptionsError, parse_options
from scripts.build.heldout import HeldOut, held_out
from scripts.config.model import ConfigError, ModelSpec, handler_class
from scripts.harness import LocalModel

logger = logging.getLogger(__name__)
ONNX_TOLERANCE = 1e-4  # largest absolute output difference an export may show
REPORT = "optimization.json"
# The gates compare numbers, not speed: no warm-up, no compilation.
GATE_OPTIONS = {"warmup": False, "compile": False, "static_shapes": False}


@dataclass(frozen=True)
class Comparison:
    """A candidate's outputs against the reference's on the same held-out requests."""

    instances: int
    max_abs_diff: float
    mean_cosine: float
    reference_accuracy: float | None
    candidate_accuracy: float | None

    @property
    def loss(self) -> float:
        """Accuracy points lost for a classifier (labels known), else 1 - mean cosine."""
        if self.reference_accuracy is not None and self.candidate_accuracy is not None:
            return self.reference_accuracy - self.candidate_accuracy
        return 1.0 - self.mean_cosine


def prepare(spec: ModelSpec, staged: Path) -> dict[str, Any]:
    """Write what the options need into `staged` and check it; raise ConfigError when a gate fails."""
    raw = spec.model_config.get("handler") or {}
    if raw.get("backend", "torch") != "onnx" and raw.get("quantize", "none") != "int8":
        return {}  # nothing to derive (and baseline archives whose handler is not a ModelHandler)
    handler_type = handler_class(spec.handler)
    options = parse_options(handler_type.Options, spec.model_config.get("handler"))
    report: dict[str, Any] = {}
    if options.backend == "onnx":
        report["onnx"] = _export_and_check(spec, handler_type, staged, options.onnx_file)
    if options.quantize == "int8":
        report["int8"] = _quantization_gate(spec, handler_type, staged, options.max_quantization_loss)
    if report:
        (staged / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _export_and_check(spec: ModelSpec, handler_type: type[ModelHandler], staged: Path,
                      onnx_file: str) -> dict[str, Any]:
    data = held_out(spec.handler.stem)
    with _local(spec, handler_type, staged, {"backend": "torch"}) as reference:
        export_onnx(reference.handler, staged / onnx_file)
        with _local(spec, handler_type, staged, {}) as candidate:
            result = compare(reference, candidate, data)
    logger.info("    onnx: exported %s (%.1f MB); largest difference from PyTorch %.2e on %d held-out "
                "instances", onnx_file, (staged / onnx_file).stat().st_size / 1e6, result.max_abs_diff,
                result.instances)
    if not result.max_abs_diff <= ONNX_TOLERANCE:
        (staged / onnx_file).unlink()
        raise ConfigError(spec.source, "model_config.handler.backend",
                          f"the ONNX export differs from PyTorch by up to {result.max_abs_diff:.2e} "
                          f"(tolerance {ONNX_TOLERANCE:g})", "use backend: torch for this model")
    return asdict(result)


def _quantization_gate(spec: ModelSpec, handler_type: type[ModelHandler], staged: Path,
                       max_loss: float) -> dict[str, Any]:
    data = held_out(spec.handler.stem)
    try:
        with _local(spec, handler_type, staged, {"quantize": "none"}) as reference, \
                _local(spec, handler_type, staged, {}) as candidate:
            result = compare(reference, candidate, data)
    except OptionsError as error:  # e.g. a quantize_skip pattern that matches no layer
        raise ConfigError(spec.source, f"model_config.handler.{error.key}", str(error),
                          "correct the pattern") from None
    measure = "accuracy points" if result.reference_accuracy is not None else "1 - mean cosine"
    logger.info("    int8 gate: loss %.4f (%s; mean cosine %.4f) on %d held-out instances, limit %.4f",
                result.loss, measure, result.mean_cosine, result.instances, max_loss)
    if result.loss > max_loss:
        raise ConfigError(
            spec.source, "model_config.handler.max_quantization_loss",
            f"int8 loses {result.loss:.4f} ({measure}) on held-out data, more than {max_loss}",
            "keep the most sensitive layers in float with quantize_skip, raise the limit knowingly, "
            "or set quantize: none")
    return {**asdict(result), "loss": result.loss, "max_loss": max_loss}


def _local(spec: ModelSpec, handler_type: type[ModelHandler], model_dir: Path,
           overrides: Mapping[str, Any]) -> LocalModel:
    config = dict(spec.model_config)
    config["handler"] = {**config.get("handler", {}), **GATE_OPTIONS, **overrides}
    return LocalModel(handler_type(), spec.name, model_dir, config, spec.version)


def outputs(model: LocalModel, data: HeldOut) -> torch.Tensor:
    """The handler's output rows for every held-out request, batchSize requests at a time."""
    handler = model.handler
    decoded = [handler.instances_of(body, data.content_type) for body in data.bodies]
    size = int(model.context.system_properties.get("batch_size") or 1)
    batches = [decoded[start:start + size] for start in range(0, len(decoded), size)]
    return torch.cat([handler.forward_batch(batch, sum(len(item) for item in batch)) for batch in batches])


def compare(reference: LocalModel, candidate: LocalModel, data: HeldOut) -> Comparison:
    expected, found = outputs(reference, data), outputs(candidate, data)
    cosine = torch.nn.functional.cosine_similarity(expected.flatten(1), found.flatten(1), dim=1)
    accuracies: list[float | None] = [None, None]
    if data.labels is not None:
        labels = torch.tensor(data.labels)
        accuracies = [float((rows.argmax(dim=1) == labels).float().mean()) for rows in (expected, found)]
    return Comparison(len(expected), float((expected - found).abs().max()), float(cosine.mean()),
                      *accuracies)


def export_onnx(handler: ModelHandler, path: Path) -> None:
    """Export the handler's float network with its batch and variable axes (NETWORK_INPUTS) left dynamic."""
    dims: dict[str, Any] = {}
    dynamic_shapes = tuple(  # one {axis: Dim} per input, in the network's argument order
        {axis: dims.setdefault(label, torch.export.Dim(label))
         for axis, label in enumerate(("batch", *shape)) if isinstance(label, str)}
        for shape in handler.NETWORK_INPUTS.values()
    )
    network = handler.load_model(path.parent).eval()
    # The exporter warns about every torchvision operator it cannot register (not ours), and
    # its optimizer logs each rewrite: keep the archive step's output readable.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes
        program = torch.onnx.export(
            network, handler.example_batch(3), input_names=list(handler.NETWORK_INPUTS),
            output_names=["rows"], dynamic_shapes=dynamic_shapes, dynamo=True, verbose=False,
        )
    program.save(str(path))
