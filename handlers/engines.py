"""Engines: what runs a handler's network on a batch of input tensors.

An engine takes the network's input tensors (batch first) and returns one float32
output row per instance. `build_engine` picks one from the handler's
`RuntimeOptions`:

    onnx                -> OnnxEngine (an ONNX Runtime session, CUDA provider first), over the
                           int8 export (options.onnx_model_file) when quantize is int8
    torch               -> TorchEngine over the network, int8-quantized and/or compiled
    static_shapes/compile -> wrapped in BucketedEngine: fixed batch sizes only

The backend is the one placed for this worker (handlers/placement.py), which resolves
`backend: auto`: ONNX Runtime on a CPU worker, torch on a CUDA one.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from handlers.options import OptionsError
from handlers.runtime import RuntimeOptions, autocast_dtype

logger = logging.getLogger(__name__)


class Engine(Protocol):
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor: ...


class TorchEngine:
    """A PyTorch module in inference mode, under autocast when a lower precision is asked for."""

    def __init__(self, module: nn.Module, device: torch.device, precision: str = "fp32") -> None:
        self.module, self.device = module, device
        self.dtype = autocast_dtype(precision)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype,
                                                    enabled=self.dtype is not None):
            return self.module(*inputs).float()


class OnnxEngine:
    """An ONNX Runtime session; inputs go in by the exported graph's input order."""

    def __init__(self, path: Path, device: torch.device, threads: int, spinning: bool = False) -> None:
        import onnxruntime as ort  # only workers with backend: onnx need it

        if not path.is_file():
            raise FileNotFoundError(f"{path.name} is not in the model archive; backend: onnx needs the "
                                    "export that `make archive` (scripts/build/archive.py) writes for "
                                    "these options (quantize: int8 writes its own file): rebuild it")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ONNX Runtime's pool threads spin after every run by default; on a small machine that
        # takes CPU from TorchServe's frontend and from other workers while this one is idle.
        for pool in ("intra_op", "inter_op"):
            options.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if spinning else "0")
        providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": str(device.index or 0)}))
        self.path = path  # which export this worker runs (float or int8)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.names = [node.name for node in self.session.get_inputs()]
        logger.info("ONNX Runtime session over %s on %s with %d threads", path.name,
                    self.session.get_providers()[0], threads)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: tensor.detach().cpu().numpy() for name, tensor in zip(self.names, inputs, strict=True)}
        (output,) = self.session.run(None, feeds)
        return torch.from_numpy(output).float()


class BucketedEngine:
    """Pads each batch up to the next of a few sizes and slices the answer back.

    Compiled code then meets at most len(sizes) batch shapes; a batch bigger than
    the largest size runs in pieces of that size. Padding repeats the last real
    row, so padded rows are valid inputs and never produce NaNs.
    """

    def __init__(self, engine: Engine, sizes: Sequence[int]) -> None:
        self.engine, self.sizes = engine, sorted(sizes)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        total, largest = len(inputs[0]), self.sizes[-1]
        pieces = []
        for start in range(0, total, largest):
            part = [tensor[start:start + largest] for tensor in inputs]
            count = len(part[0])
            size = next(size for size in self.sizes if size >= count)
            pieces.append(self.engine(*(pad_rows(tensor, size) for tensor in part))[:count])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def pad_rows(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """`tensor` with its last row repeated until it has `size` rows."""
    missing = size - len(tensor)
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])


def int8_layers(module: nn.Module, skip: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(Linear layers to quantize, all Linear layers) by module name; both backends pick layers here.

    A `skip` pattern that matches no Linear layer is an OptionsError naming quantize_skip,
    so a typo cannot silently quantize the layer it meant to keep.
    """
    linear = [name for name, layer in module.named_modules() if isinstance(layer, nn.Linear)]
    for pattern in skip:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in linear):
            raise OptionsError("quantize_skip", f"{pattern!r} matches no Linear layer; they are named "
                                                f"like {linear[0]!r} ... {linear[-1]!r}")
    names = [name for name in linear if not any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)]
    return names, linear


def quantize_int8(module: nn.Module, skip: Sequence[str] = ()) -> nn.Module:
    """Dynamic int8 Linear layers (per-channel weights), except modules matching a `skip` pattern.

    torch.ao's quantize_dynamic (deprecated in favour of torchao, but still in
    torch and with fast fbgemm kernels on x86) needs no extra package; it runs on the CPU only.
    """
    names, linear = int8_layers(module, skip)
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)  # quantized tensor creation is deprecated too
        quantized = quantize_dynamic(module, {name: per_channel_dynamic_qconfig for name in names},
                                     dtype=torch.qint8)
    logger.info("int8: %d Linear layers quantized, %d kept in float", len(names), len(linear) - len(names))
    return quantized


def compile_module(module: nn.Module, options: RuntimeOptions, shapes: int) -> nn.Module:
    """torch.compile with one static graph per bucket shape, using inductor's on-disk cache."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    if options.compile_cache_dir:  # read when inductor first compiles, so set it before
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = options.compile_cache_dir
    inductor_config.fx_graph_cache = True
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, shapes)
    return torch.compile(module, mode=options.compile_mode, dynamic=False)


def build_engine(options: RuntimeOptions, backend: str, device: torch.device,
                 network: Callable[[], nn.Module], model_dir: Path, threads: int, sizes: Sequence[int],
                 shapes: int) -> Engine:
    """The engine for the placed `backend` ("torch" or "onnx") on `device`, as the options ask;
    `network` builds the float module on the CPU (torch backend)."""
    if backend == "onnx":
        engine: Engine = OnnxEngine(model_dir / options.onnx_model_file, device, threads,
                                    spinning=options.onnx_spinning)
    else:
        module = network()
        if options.quantize == "int8":
            if device.type == "cuda":
                logger.warning("quantize: int8 runs on the CPU only; this worker has %s, so it runs "
                               "in float (use precision: fp16 or bf16 on a GPU)", device)
            else:
                module = quantize_int8(module, options.quantize_skip)
        module = module.to(device).eval()
        if options.compile:
            module = compile_module(module, options, shapes)
        engine = TorchEngine(module, device, options.precision)
    return BucketedEngine(engine, sizes) if options.buckets else engine
