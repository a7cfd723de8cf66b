"""Breast-cancer classifier: 30 raw feature values in, class and probabilities out.

Native request (application/json): {"features": [30 numbers]} or {"features": [[30 numbers], ...]}
KServe v1 instance: [30 numbers] or {"features": [30 numbers]}
OIP input: "features", shape [N, 30], any numeric datatype
Response: {"label": "benign", "class_index": 1, "probabilities": {"malignant": 0.01, "benign": 0.99}}
(a list of those when a list of rows was sent); OIP outputs "label" (BYTES [N]),
"class_index" (INT64 [N]) and "probabilities" (FP32 [N, 2]).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handlers.architectures import TABULAR_CLASSES, TABULAR_FEATURES, TabularMLP
from handlers.base import Decoded, ModelHandler
from handlers.errors import InvalidInput
from handlers.options import OptionsError, check_range
from handlers.payload import Payload
from handlers.runtime import RuntimeOptions
from handlers.tensors import NUMBER_TYPES, OutputTensor, TensorSpec
from handlers.validation import JSON_TYPES, float_matrix, float_rows, require_content_type
from handlers.weights import load_module

_EXPECTED = f'a JSON object {{"features": [{TABULAR_FEATURES} numbers]}}'


class TabularHandler(ModelHandler):
    """Scaling lives inside the model, so clients send raw feature values."""

    INPUT = TensorSpec("features", NUMBER_TYPES, (TABULAR_FEATURES,))
    OUTPUTS = ("label", "class_index", "probabilities")
    NETWORK_INPUTS = {"features": ("batch",)}

    @dataclass(frozen=True)
    class Options(RuntimeOptions):  # nested: TorchServe wants exactly one class per handler module
        weights: str = "tabular.safetensors"
        class_names: tuple[str, ...] = ("malignant", "benign")
        max_instances: int = 256

        def __post_init__(self) -> None:
            super().__post_init__()
            check_range("max_instances", self.max_instances, 1)
            if len(self.class_names) != TABULAR_CLASSES:
                raise OptionsError("class_names", f"needs {TABULAR_CLASSES} names, one per class")

    def network(self, model_dir: Path) -> nn.Module:
        mlp = load_module(TabularMLP(), model_dir / self.options.weights, torch.device("cpu"),
                          mmap=self.options.mmap_weights)
        return nn.Sequential(mlp, nn.Softmax(dim=1))

    def warmup_instances(self) -> list[torch.Tensor]:
        return [torch.zeros(1, TABULAR_FEATURES)]

    def decode(self, payload: Payload) -> Decoded:
        require_content_type(payload, JSON_TYPES, "application/json")
        document = payload.json()
        if not isinstance(document, dict) or "features" not in document:
            raise InvalidInput(f"expected {_EXPECTED}")
        rows, single = float_rows(
            document["features"], TABULAR_FEATURES, "features", self.options.max_instances
        )
        return Decoded(rows, single)

    def decode_instances(self, values: list[Any], where: str) -> torch.Tensor:
        names = [f"{where}[{number}]" for number in range(len(values))]
        rows = []
        for value, name in zip(values, names, strict=True):
            if isinstance(value, dict) and "features" not in value:
                raise InvalidInput(f"'{name}' must be [{TABULAR_FEATURES} numbers] or {_EXPECTED}")
            rows.append(value["features"] if isinstance(value, dict) else value)
        return float_matrix(rows, TABULAR_FEATURES, names)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return self.engine(batch)

    def encode(self, row: torch.Tensor) -> Any:
        probabilities = row.tolist()
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        names = self.options.class_names
        return {
            "label": names[best],
            "class_index": best,
            "probabilities": dict(zip(names, probabilities, strict=True)),
        }

    def encode_outputs(self, rows: torch.Tensor) -> list[OutputTensor]:
        best = rows.argmax(dim=1)
        return [
            OutputTensor.of("label", "BYTES", [self.options.class_names[i] for i in best.tolist()]),
            OutputTensor.of("class_index", "INT64", best),
            OutputTensor.of("probabilities", "FP32", rows),
        ]
