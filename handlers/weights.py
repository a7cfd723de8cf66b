"""Safe weight loading: safetensors only, so loading never unpickles code."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def load_state_dict_into(
    module: torch.nn.Module, path: Path, device: torch.device, ignore: tuple[str, ...] = ()
) -> None:
    """Fill `module` from a safetensors file, strictly (a missing or extra key is an error).

    `ignore` names saved keys the module no longer keeps, such as buffers that a
    newer library version made non-persistent.
    """
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} is not in the model archive")
    state = load_file(str(path), device=str(device))
    for key in ignore:
        state.pop(key, None)
    module.load_state_dict(state, strict=True)
