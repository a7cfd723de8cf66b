"""A damaged weights file says so (and which file), instead of asking for terabytes of memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.weights import mapped_safetensors

WEIGHTS = Path("build/weights/tabular/tabular.safetensors")


@pytest.mark.parametrize(("damage", "says"), [
    (lambda data: b"\xff" * 8 + data[8:], "header claims"),
    (lambda data: data[: len(data) // 2], "ends past the end of the file"),
])
def test_damaged_weights_name_the_file_and_the_fix(tmp_path: Path, damage, says: str) -> None:
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(damage(WEIGHTS.read_bytes()))
    with pytest.raises(ValueError, match=f"{damaged} is damaged: .*{says}.*make archive"):
        mapped_safetensors(damaged)


def test_sound_weights_still_load() -> None:
    tensors = mapped_safetensors(WEIGHTS)
    assert len(tensors) == 8 and all(tensor.numel() > 0 for tensor in tensors.values())
