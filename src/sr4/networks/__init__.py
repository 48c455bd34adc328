"""Stage U: the MambaIRv2 upsamplers, their selective scan, and checkpoint loading."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "MambaIRv2": "sr4.networks.mambairv2",
    "MambaIRv2Light": "sr4.networks.mambairv2_light",
    "selective_scan": "sr4.networks.selective_scan",
    "read_state_dict": "sr4.networks.loading",
    "detect_upsampler": "sr4.networks.loading",
    "load_upsampler": "sr4.networks.loading",
    "build_and_load": "sr4.networks.loading",
    "CheckpointError": "sr4.networks.loading",
    "UpsamplerConfig": "sr4.networks.loading",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sr4.networks' has no attribute {name!r}")
