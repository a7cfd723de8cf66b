"""Safe weight loading: safetensors only, so loading never unpickles code.

With `mmap=True` the tensors are views of one read-only mapping of the file, and
the module's parameters become those views (`load_state_dict(assign=True)`): every
worker of a model maps the same extracted archive file, so the machine holds one
physical copy of the weights however many workers there are. (safetensors' own
`load_file` copies every tensor into private memory: one copy per worker.)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file

M = TypeVar("M", bound=torch.nn.Module)
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
           "U8": torch.uint8, "BOOL": torch.bool}


def load_weights(module: M, path: Path, *, mmap: bool = False, ignore: tuple[str, ...] = ()) -> M:
    """Fill `module` on the CPU from a safetensors file, strictly, and return it in eval mode.

    A missing or extra key is an error. `ignore` names saved keys the module no
    longer keeps, such as buffers a newer library version made non-persistent.
    The engine moves the module to its device afterwards.
    """
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} is not in the model archive")
    state = mapped_safetensors(path) if mmap else load_file(str(path))
    for key in ignore:
        state.pop(key, None)
    module.load_state_dict(state, strict=True, assign=mmap)
    return module.eval()


def mapped_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of one copy-on-write mapping of it.

    The format: 8 bytes little-endian header length, a JSON header giving each
    tensor's dtype, shape and byte range after the header, then the bytes.
    """
    size = path.stat().st_size
    with path.open("rb") as stream:
        (header_length,) = struct.unpack("<Q", stream.read(8).ljust(8, b"\xff"))
        if header_length > size - 8:  # checked first: a damaged length would otherwise ask for TBs
            raise ValueError(f"weights file {path} is damaged: its header claims {header_length} bytes, "
                             f"the file has {size}; rebuild the archive (`make archive`)")
        header = json.loads(stream.read(header_length))
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    data = torch.tensor([], dtype=torch.uint8).set_(storage)
    start = 8 + header_length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        if start + end > size:
            raise ValueError(f"weights file {path} is damaged: tensor {name} ends past the end of the file; "
                             "rebuild the archive (`make archive`)")
        raw = data[start + begin:start + end]
        tensors[name] = raw.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return tensors
