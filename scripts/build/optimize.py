"""What the archive step derives from a model's float weights, and the gates it must pass.

Called by `scripts/build/archive.py` on the staged archive folder, before the archive is written:

    backend: onnx    (or auto, which runs the export on CPU workers)
                     export the network to ONNX (dynamic batch axis; sequence axis for
                     text), then run the held-out requests through the handler twice,
                     PyTorch and ONNX Runtime; refuse if any output differs by > 1e-4.
    quantize: int8   run the held-out requests through the float PyTorch handler and the
                     int8 one; refuse if the loss passes `max_quantization_loss` (accuracy
                     points for a classifier, 1 - mean cosine for an embedding).
    both             export and check as above, then quantize the export with ONNX
                     Runtime (dynamic int8, the same Linear layers torch would quantize),
                     write it as `options.onnx_model_file` in place of the float export,
                     and gate it against float PyTorch like torch int8.

Both comparisons drive the handler itself (decode, collate, engine), so what is
measured is what the worker will serve. The figures go into the archive as
`optimization.json`.
"""

from __future__ import annotations

import ast
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from handlers.base import ModelHandler
from handlers.batch import forward_batch, instances_of
from handlers.engines import int8_layers
from handlers.modules import handler_class
from handlers.options import OptionsError, parse_options
from handlers.runtime import RuntimeOptions
from scripts.build.heldout import HeldOut, held_out
from scripts.config.model import ConfigError, ModelSpec
from scripts.harness import LocalModel

logger = logging.getLogger(__name__)
ONNX_TOLERANCE = 1e-4  # largest absolute output difference an export may show
REPORT = "optimization.json"
# The gates compare numbers, not speed: no warm-up, no compilation.
GATE_OPTIONS = {"warmup": False, "compile": False, "static_shapes": False}
FLOAT_TORCH = {"backend": "torch", "quantize": "none", "onnx_spinning": False}  # every gate's reference
# ONNX Runtime int8 weight scales per output channel, not one per tensor: measured once on
# minilm's gate (its quantize_skip; mean cosine to float PyTorch, 256 held-out sentences):
# per-channel 0.9965, per-tensor 0.9925 (reduce_range 7-bit weights: 0.9971 and 0.9754).
ONNX_PER_CHANNEL = True
SCOPES = "pkg.torch.onnx.name_scopes"  # node metadata the dynamo exporter writes: the module path

if TYPE_CHECKING:
    import onnx


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
    if raw.get("backend", "torch") not in ("onnx", "auto") and raw.get("quantize", "none") != "int8":
        return {}  # nothing to derive (and baseline archives whose handler is not a ModelHandler)
    handler_type = handler_class(spec.handler)
    options = parse_options(handler_type.Options, spec.model_config.get("handler"))
    report: dict[str, Any] = {}
    if options.exports_onnx:  # auto runs the export on CPU workers
        report["onnx"] = _export_and_check(spec, handler_type, staged, options.onnx_file)
        if options.quantize == "int8":
            report["onnx_int8"] = _quantize_export(spec, handler_type, staged, options)
    if options.quantize == "int8":
        report["int8"] = _quantization_gate(spec, handler_type, staged, options.max_quantization_loss)
    if report:
        (staged / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _export_and_check(spec: ModelSpec, handler_type: type[ModelHandler], staged: Path,
                      onnx_file: str) -> dict[str, Any]:
    data = held_out(spec.handler.stem)
    with _local(spec, handler_type, staged, FLOAT_TORCH) as reference:
        export_onnx(reference.handler, staged / onnx_file)
        with _local(spec, handler_type, staged, {"quantize": "none"}) as candidate:  # the float export
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
    """Float PyTorch against the int8 handler the worker will run (torch.ao or ONNX Runtime)."""
    data = held_out(spec.handler.stem)
    with _option_errors(spec), _local(spec, handler_type, staged, FLOAT_TORCH) as reference, \
            _local(spec, handler_type, staged, {}) as candidate:
        result = compare(reference, candidate, data)
        engine = "ONNX Runtime" if candidate.handler.placement.backend == "onnx" else "PyTorch"
    measure = "accuracy points" if result.reference_accuracy is not None else "1 - mean cosine"
    logger.info("    int8 gate (%s): loss %.4f (%s; mean cosine %.4f) on %d held-out instances, limit %.4f",
                engine, result.loss, measure, result.mean_cosine, result.instances, max_loss)
    if result.loss > max_loss:
        raise ConfigError(
            spec.source, "model_config.handler.max_quantization_loss",
            f"int8 ({engine}) loses {result.loss:.4f} ({measure}) on held-out data, more than {max_loss}",
            "keep the most sensitive layers in float with quantize_skip, raise the limit knowingly, "
            "or set quantize: none")
    return {**asdict(result), "loss": result.loss, "max_loss": max_loss, "engine": engine}


def _quantize_export(spec: ModelSpec, handler_type: type[ModelHandler], staged: Path,
                     options: RuntimeOptions) -> dict[str, Any]:
    """Replace the checked float export with its ONNX Runtime int8 version; the gate then measures it.

    Only the float export's nodes that come from the Linear layers torch int8 would quantize
    (`int8_layers`: the same `quantize_skip` patterns) are quantized, so both backends keep
    the same layers in float.
    """
    source, target = staged / options.onnx_file, staged / options.onnx_model_file
    with _option_errors(spec), _local(spec, handler_type, staged, FLOAT_TORCH) as reference:
        network = reference.handler.engine.module  # GATE_OPTIONS: a plain TorchEngine over the float network
        names, linear = int8_layers(network, options.quantize_skip)
    quantized, kept = quantize_onnx(source, target, set(names), set(linear))
    if names and not quantized:
        raise ConfigError(spec.source, "model_config.handler.quantize",
                          f"none of the {len(names)} Linear layers could be found in the ONNX export "
                          f"(its nodes carry no {SCOPES} metadata)", "use backend: torch with quantize: int8")
    source.unlink()  # the worker loads the int8 file; the float one would only double the archive
    logger.info("    onnx int8: %s (%.1f MB), %d layers int8 (%s weight scales), %d kept in float",
                target.name, target.stat().st_size / 1e6, len(quantized),
                "per-channel" if ONNX_PER_CHANNEL else "per-tensor", len(kept))
    return {"file": target.name, "quantized": len(quantized), "kept_float": len(kept),
            "per_channel": ONNX_PER_CHANNEL}


def quantize_onnx(source: Path, target: Path, wanted: set[str],
                  linear: set[str]) -> tuple[list[str], list[str]]:
    """Dynamic int8 (QInt8 weights) for the nodes of the `wanted` Linear layers; (quantized, kept) layers.

    Nodes map to torch modules through the exporter's name scopes. Gemm (what a Linear
    on 2-D input exports to) has no dynamic int8 kernel in ONNX Runtime, so a wanted Gemm
    becomes MatMul + Add first.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    layer_of = {node.name: layer for node in model.graph.node
                if node.op_type in ("MatMul", "Gemm") and (layer := _linear_layer(node, linear))}
    op_of = {node.name: node.op_type for node in model.graph.node}
    nodes = [name for name, layer in layer_of.items() if layer in wanted]
    if not nodes:  # quantize_dynamic reads an empty node list as "every node"
        onnx.save(model, str(target))
        return [], sorted(set(layer_of.values()))
    rewritten = _gemm_to_matmul(model.graph, set(nodes))
    # Only MatMul has a dynamic int8 kernel: a Gemm left as it was (alpha, transA) stays float.
    nodes = [name for name in nodes if name in rewritten or op_of[name] == "MatMul"]
    with _quiet_quantizer():
        quantize_dynamic(model, target, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                         per_channel=ONNX_PER_CHANNEL, weight_type=QuantType.QInt8)
    quantized = sorted({layer_of[name] for name in nodes})
    return quantized, sorted(set(layer_of.values()) - set(quantized))


def _linear_layer(node: onnx.NodeProto, linear: set[str]) -> str | None:
    """The Linear module a node was exported from: the deepest of its name scopes that is one."""
    scopes = next((prop.value for prop in node.metadata_props if prop.key == SCOPES), None)
    if scopes is None:
        return None
    return next((scope for scope in reversed(ast.literal_eval(scopes)) if scope in linear), None)


def _gemm_to_matmul(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    """Rewrite the named plain Gemm nodes (A @ B^T + C, constant B) as MatMul + Add, in place.

    Returns the names rewritten; the MatMul keeps the Gemm's name and metadata.
    """
    from onnx import helper, numpy_helper

    weights = {tensor.name: tensor for tensor in graph.initializer}
    rewritten: list[onnx.NodeProto] = []
    done: set[str] = set()
    for node in graph.node:
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        if (node.name not in names or node.op_type != "Gemm" or node.input[1] not in weights
                or attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0
                or attributes.get("beta", 1.0) != 1.0):
            rewritten.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        if attributes.get("transB", 0):
            weight = weight.T.copy()
        kn = f"{node.input[1]}_kn"  # the weight as MatMul wants it: [in, out]
        graph.initializer.append(numpy_helper.from_array(weight, kn))
        biased = len(node.input) > 2 and bool(node.input[2])
        product = f"{node.output[0]}_matmul" if biased else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], kn], [product], name=node.name)
        matmul.metadata_props.extend(node.metadata_props)
        rewritten.append(matmul)
        done.add(node.name)
        if biased:
            rewritten.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                              name=f"{node.name}_bias"))
    graph.ClearField("node")
    graph.node.extend(rewritten)
    used = {name for node in graph.node for name in node.input}
    for tensor in [tensor for tensor in graph.initializer if tensor.name not in used]:
        graph.initializer.remove(tensor)
    return done


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop what ONNX Runtime's quantizer logs on the root logger: a line per unquantized input, and
    its advice to pre-process (we quantize the export as written; ONNX Runtime applies its graph
    optimizations when the worker opens the session). Its other warnings still show.
    """
    def keep(record: logging.LogRecord) -> bool:
        if "onnxruntime" not in record.pathname:
            return True
        advice = "pre-processing before quantization" in record.getMessage()
        return record.levelno >= logging.WARNING and not advice

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@contextmanager
def _option_errors(spec: ModelSpec) -> Iterator[None]:
    """An OptionsError (e.g. a quantize_skip pattern that matches no layer) as this config's error."""
    try:
        yield
    except OptionsError as error:
        raise ConfigError(spec.source, f"model_config.handler.{error.key}", str(error),
                          "correct the pattern") from None


def _local(spec: ModelSpec, handler_type: type[ModelHandler], model_dir: Path,
           overrides: Mapping[str, Any]) -> LocalModel:
    config = dict(spec.model_config)
    config["handler"] = {**config.get("handler", {}), **GATE_OPTIONS, **overrides}
    return LocalModel(handler_type(), spec.name, model_dir, config, spec.version)


def outputs(model: LocalModel, data: HeldOut) -> torch.Tensor:
    """The handler's output rows for every held-out request, batchSize requests at a time."""
    handler = model.handler
    decoded = [instances_of(handler, body, data.content_type) for body in data.bodies]
    size = int(model.context.system_properties.get("batch_size") or 1)
    batches = [decoded[start:start + size] for start in range(0, len(decoded), size)]
    return torch.cat([forward_batch(handler, batch, sum(len(item) for item in batch)) for batch in batches])


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
