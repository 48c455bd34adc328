"""Stage U's networks: MambaIRv2 and MambaIRv2-Light (registered in `sr4.models`), their selective scan, bicubic."""

from __future__ import annotations

from sr4.utils.lazy import lazy_attributes

_LAZY = {
    "MambaIRv2": "sr4.networks.mambairv2",
    "MambaIRv2Light": "sr4.networks.mambairv2_light",
    "selective_scan": "sr4.networks.scan",
    "BicubicUpsampler": "sr4.networks.bicubic",
}

__all__ = list(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
