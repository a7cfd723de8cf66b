"""The plain TorchServe handler the docs show, as a benchmark baseline (not for serving).

It subclasses `BaseHandler` and does preprocess -> inference -> postprocess with
`torch.stack` / `torch.cat` over the batch: no validation, no per-request
isolation (one bad request fails its whole batch), no protocols. Model loading,
the forward pass and the answer format are our handlers' own, so a comparison
with them measures only what the handler does around the model.

The archive's model-config names the model: `plain: {model: tabular}`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

from handlers.architectures import DIGITS_SIDE
from handlers.base import ModelHandler
from handlers.batch import native_answers
from handlers.digits import DigitsHandler
from handlers.engines import TorchEngine
from handlers.images import to_digit_tensor
from handlers.minilm import MiniLMHandler
from handlers.options import parse_options
from handlers.placement import pick_device
from handlers.tabular import TabularHandler
from scripts.config.model import CONFIG_DIR, load_spec

MODELS: dict[str, type[ModelHandler]] = {
    "tabular": TabularHandler, "digits": DigitsHandler, "minilm": MiniLMHandler,
}


def model_files(kind: str) -> tuple[Path, dict[str, Any]]:
    """A baseline's model folder (every example model keeps its files in one) and its model-config."""
    spec = load_spec(CONFIG_DIR / f"{kind}.yaml")
    (model_dir,) = {file.parent for file in spec.files}
    return model_dir, dict(spec.model_config)


def load_model(kind: str, model_dir: Path, model_config: dict[str, Any],
               device: torch.device) -> ModelHandler:
    """Our handler for `kind` with its eager network, used only for its load, collate and answers."""
    model = MODELS[kind]()
    model.options = parse_options(model.Options, model_config.get("handler"))
    model.device = device
    model.setup(model_dir)
    model.engine = TorchEngine(model.load_model(model_dir).to(device).eval(), device)
    return model


def plain_batch(kind: str, model: ModelHandler, bodies: list[Any]) -> Any:
    """The docs' preprocess: read each body the happy way and stack them."""
    if kind == "tabular":
        rows = torch.stack([torch.tensor(body["features"], dtype=torch.float32) for body in bodies])
        return rows.to(model.device)
    if kind == "digits":
        images = [Image.open(io.BytesIO(body)) for body in bodies]
        return torch.cat([to_digit_tensor(image, DIGITS_SIDE, "auto") for image in images]).to(model.device)
    return model.collate([[body["text"]] for body in bodies])


class PlainHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        self.kind = context.model_yaml_config["plain"]["model"]
        self.model = load_model(self.kind, Path(context.system_properties["model_dir"]),
                                context.model_yaml_config, pick_device(context.system_properties))
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        return plain_batch(self.kind, self.model, [row.get("data") or row.get("body") for row in data])

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.inference(data).cpu()

    def postprocess(self, data: torch.Tensor) -> list[Any]:
        return native_answers(self.model, self.model.postprocess(data), len(data))
