"""The contract a model author writes against: one `ModelHandler` subclass per model module.

Declare what one instance is and what the model answers, then write the hooks
(TorchServe's names; only the first two are required). docs/adding-a-model.md walks
through a whole model.

    INPUT          = Input(...)          what one instance is, in every request shape
    OUTPUTS        = (Output(...), ...)  what the model answers per instance
    NETWORK_INPUTS = {"name": shape}     the network's inputs, per-instance shape (str: a variable axis);
                                         by default INPUT's name and shape, when INPUT is numbers
    class Options(RuntimeOptions)        the `handler:` section of the model YAML

    load_model(model_dir) -> nn.Module    the float network on the CPU, weights loaded
    preprocess(instances) -> inputs       one request's values (or one form field's) -> network inputs
    postprocess(rows) -> {output: values} one request's rows, as the network gave them -> named outputs
    answer(outputs) -> JSON               one instance's native JSON answer (default: outputs)

Unlike stock BaseHandler, preprocess and postprocess see one request, not the batch.
TorchServe calls `initialize` once per worker (handlers/worker.py: options, device,
engine, warm-up, so READY means warm) and `handle` once per batch (handlers/batch.py:
each request in its own try block, one forward pass, one response and status per
request). Subclasses never override either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from ts.torch_handler.base_handler import BaseHandler

from handlers.batch import answer_batch
from handlers.engines import Engine
from handlers.metrics import HandlerMetrics
from handlers.placement import Placement
from handlers.request import Instances, join_instances
from handlers.runtime import RuntimeOptions, to_device
from handlers.signature import Input, Output
from handlers.worker import start_worker


class ModelHandler(BaseHandler):
    """Base handler: subclasses declare INPUT and OUTPUTS and write `load_model` and `preprocess`."""

    Options: ClassVar[type[RuntimeOptions]] = RuntimeOptions
    INPUT: ClassVar[Input]
    OUTPUTS: ClassVar[tuple[Output, ...]] = (Output("output", "FP32"),)
    NETWORK_INPUTS: ClassVar[dict[str, tuple[int | str, ...]]]  # default: see __init_subclass__
    # postprocess reads each row on its own (argmax, a lookup): it may then run once for the
    # whole batch and hand each request its rows' share, which answers the same for less.
    POSTPROCESS_BY_ROW: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """NETWORK_INPUTS defaults to INPUT's name and shape when INPUT is numbers of a fixed shape."""
        super().__init_subclass__(**kwargs)
        if "INPUT" in vars(cls) and "NETWORK_INPUTS" not in vars(cls):
            tensor = cls.INPUT.as_network_input()
            if tensor is not None:
                cls.NETWORK_INPUTS = tensor

    def __init__(self) -> None:
        super().__init__()
        # What initialize sets (handlers/worker.py), read by the hooks below.
        self.options: Any = None  # the `handler:` section as this class's Options
        self.device = torch.device("cpu")  # where collate puts the batch
        self.engine: Engine | None = None  # runs the network on a batch: inference calls it
        self.placement: Placement | None = None  # which engine runs where
        self.batch_sizes: list[int] = [1]  # the sizes warmed before READY
        self.metrics = HandlerMetrics(None)

    # ---- hooks -------------------------------------------------------------------
    def setup(self, model_dir: Path) -> None:
        """Load what preprocess needs besides the network, such as a tokenizer (optional)."""

    def load_model(self, model_dir: Path) -> nn.Module:
        """The float network on the CPU, weights loaded: network inputs -> one row per instance."""
        raise NotImplementedError

    def preprocess(self, request: Instances) -> torch.Tensor | np.ndarray | list[Any]:
        """One request's instance values -> one network input each (a tensor or array [n, ...], or a list).

        `request` is one `Instances`: the values of one request's body, or of one field of a
        multipart form (a form gives one per field, each preprocessed on its own; `admit`
        saw them all first). `request.names[i]` says where value i came from: raise a
        RequestError (InvalidInput, PayloadTooLarge, ...) naming it, and that request alone
        gets the error.
        """
        raise NotImplementedError

    def admit(self, parts: list[Instances]) -> list[Instances]:
        """Refuse a request whose work would outlast its batch's time, before any preprocess (optional).

        Sees every part of one request (a form has one per field), so a budget counts the
        whole request. Raise PayloadTooLarge naming the limit; leave bad values to preprocess,
        which names them. A batch over TorchServe's responseTimeout fails every request in it.
        Returns the parts preprocess sees: `parts`, or them with values admit already read
        (an image's opened header), so no work is done twice.
        """
        return parts

    def collate(self, per_request: Sequence[Any]) -> Any:
        """Join the instances of all good requests into one batch on `self.device` (numpy arrays
        become one tensor here, so a handler's preprocess need not make a tensor per request)."""
        joined = join_instances(per_request)
        if isinstance(joined, np.ndarray):
            joined = torch.from_numpy(joined)
        return to_device(joined, self.device) if isinstance(joined, torch.Tensor) else joined

    def inference(self, batch: Any) -> torch.Tensor:
        """One pass of the engine: the batch is a tensor or a tuple of the network's inputs."""
        assert self.engine is not None, "initialize() builds the engine"
        return self.engine(*batch) if isinstance(batch, tuple) else self.engine(batch)

    def postprocess(self, rows: torch.Tensor) -> dict[str, Any]:
        """One request's output rows -> each declared output: a tensor [n, ...] or n plain values.

        `rows` are what `inference` returned for this request's n instances, on the CPU: whatever
        the network's forward gives (probabilities only if load_model appended a Softmax). With
        POSTPROCESS_BY_ROW, `rows` may be the whole batch's at once.
        """
        (output,) = self.OUTPUTS  # the default fits a model with one output
        return {output.name: rows}

    def answer(self, outputs: dict[str, Any]) -> Any:
        """One instance's native JSON answer, from its named outputs (as JSON values)."""
        return outputs

    def warmup_instances(self) -> list[Any]:
        """One preprocessed instance per input shape the network will see (one zero row by default)."""
        (shape,) = self.NETWORK_INPUTS.values()  # override for several inputs or variable axes
        return [torch.zeros(1, *shape)]

    def example_batch(self, size: int) -> tuple[torch.Tensor, ...]:
        """The network's inputs for `size` instances (the ONNX export traces these)."""
        batch = self.collate([self.warmup_instances()[0]] * size)
        return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)

    # ---- TorchServe entry points: the runner's, never overridden ----------------------
    def initialize(self, context: Any) -> None:
        """Once per worker: options, device, setup, engine and warm-up (handlers/worker.py)."""
        start_worker(self, context)

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        """One batch: one response and one status per request, in order (handlers/batch.py)."""
        return answer_batch(self, data, context)

    @property
    def postprocesses_batches(self) -> bool:
        """Whether postprocess may run once for a whole batch: it reads rows one by one (the default does)."""
        return self.POSTPROCESS_BY_ROW or type(self).postprocess is ModelHandler.postprocess

    @property
    def answers_outputs_as_given(self) -> bool:
        """Whether `answer` is the default, which passes outputs on as they are (float rows stay numpy)."""
        return type(self).answer is ModelHandler.answer
