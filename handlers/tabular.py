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

import numpy as np
import torch
from torch import nn

from handlers import (
    NUMBER_TYPES,
    Input,
    Instances,
    ModelHandler,
    Output,
    RuntimeOptions,
    float_matrix,
    load_weights,
    option,
)
from handlers.architectures import TABULAR_CLASSES, TABULAR_FEATURES, TabularMLP


class TabularHandler(ModelHandler):
    """Scaling lives inside the model, so clients send raw feature values."""

    INPUT = Input("features", NUMBER_TYPES, (TABULAR_FEATURES,))
    OUTPUTS = (Output("label", "BYTES"), Output("class_index", "INT64"),
               Output("probabilities", "FP32", (TABULAR_CLASSES,)))
    POSTPROCESS_BY_ROW = True  # an argmax and a name per row

    @dataclass(frozen=True)
    class Options(RuntimeOptions):  # nested: TorchServe wants exactly one class per handler module
        weights: str = "tabular.safetensors"
        class_names: tuple[str, ...] = option(("malignant", "benign"), length=TABULAR_CLASSES)
        max_instances: int = option(256, low=1)

    def load_model(self, model_dir: Path) -> nn.Module:
        mlp = load_weights(TabularMLP(), model_dir / self.options.weights, mmap=self.options.mmap_weights)
        return nn.Sequential(mlp, nn.Softmax(dim=1))

    def preprocess(self, request: Instances) -> np.ndarray:
        return float_matrix(request.values, TABULAR_FEATURES, request.names)

    def postprocess(self, rows: torch.Tensor) -> dict[str, Any]:
        best = rows.argmax(dim=1)
        labels = [self.options.class_names[index] for index in best.tolist()]
        return {"label": labels, "class_index": best, "probabilities": rows}

    def answer(self, outputs: dict[str, Any]) -> Any:
        """Probabilities keyed by class name, so a client need not know the class order."""
        names = self.options.class_names
        return {**outputs, "probabilities": dict(zip(names, outputs["probabilities"], strict=True))}
