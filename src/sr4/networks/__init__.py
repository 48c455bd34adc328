"""Stage U's networks: MambaIRv2 and MambaIRv2-Light (registered in `sr4.models`), their selective scan, bicubic."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "MambaIRv2": "sr4.networks.mambairv2",
    "MambaIRv2Light": "sr4.networks.mambairv2_light",
    "selective_scan": "sr4.networks.scan",
    "BicubicUpsampler": "sr4.networks.bicubic",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sr4.networks' has no attribute {name!r}")
