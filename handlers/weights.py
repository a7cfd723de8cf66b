"""Safe weight loading: safetensors only, so loading never unpickles code."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file

M = TypeVar("M", bound=torch.nn.Module)


def load_module(module: M, path: Path, device: torch.device, ignore: tuple[str, ...] = ()) -> M:
    """Fill `module` from a safetensors file and return it on `device`, in eval mode."""
    load_state_dict_into(module, path, device, ignore)
    return module.to(device).eval()


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
