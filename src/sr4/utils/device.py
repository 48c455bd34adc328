"""Device and dtype choice shared by every command: CUDA when present, CPU otherwise."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda:0 when available else cpu; 'cuda:N' is checked to exist."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
           "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


HALF_DTYPES = (torch.float16, torch.bfloat16)


def resolve_dtype(name: str | torch.dtype | None, device: torch.device,
                  supported: tuple[torch.dtype, ...] | None = None) -> torch.dtype:
    """'auto' -> fp16 on CUDA, fp32 elsewhere (half precision on CPU is slow and inexact).

    `supported`: the half-precision dtypes a model runs in (its descriptor's `supported_dtypes`); 'auto' picks fp16
    only when it is one of them, and naming a half type that is not raises ValueError. float32 is always allowed."""
    if isinstance(name, torch.dtype):
        dtype = name
    elif name in (None, "", "auto"):
        half_ok = supported is None or torch.float16 in supported
        return torch.float16 if device.type == "cuda" and half_ok else torch.float32
    else:
        try:
            dtype = _DTYPES[name]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}; choose one of auto, {', '.join(sorted(_DTYPES))}") from None
    if supported is not None and dtype in HALF_DTYPES and dtype not in supported:
        names = ", ".join(str(d).removeprefix("torch.") for d in supported)
        raise ValueError(f"this model runs in {names}, not {str(dtype).removeprefix('torch.')}")
    return dtype
