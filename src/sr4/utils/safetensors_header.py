"""Tensor names, shapes and dtypes of a safetensors file, read from its JSON header without torch.

A safetensors file starts with the header's length (8 bytes, little-endian) and the header itself, a JSON
object {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}} (huggingface/safetensors, README
"Format"). Reading it costs a few milliseconds, where importing torch costs a second or more: `sr4 info`
describes the bundled model this way.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

# safetensors dtype codes -> torch's names (what `str(tensor.dtype)` prints after "torch.").
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
               "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
               "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one stored tensor (enough for architecture detection, which reads `.shape`)."""

    shape: tuple[int, ...]
    dtype: str  # torch's name, e.g. "float32"

    @property
    def is_floating_point(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))

    def numel(self) -> int:
        return math.prod(self.shape)


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """{name: TensorInfo} of every tensor in `path`; ValueError naming the file if the header is malformed."""
    path = Path(path)
    with open(path, "rb") as f:
        size_bytes = f.read(8)
        if len(size_bytes) < 8:
            raise ValueError(f"{path}: too short for a safetensors file")
        (size,) = struct.unpack("<Q", size_bytes)
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: safetensors header of {size} bytes is larger than the format allows")
        raw = f.read(size)
    if len(raw) < size:
        raise ValueError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(raw)
        return {name: TensorInfo(tuple(int(n) for n in entry["shape"]), DTYPE_NAMES.get(entry["dtype"], entry["dtype"]))
                for name, entry in header.items() if name != "__metadata__"}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed safetensors header ({exc})") from exc
