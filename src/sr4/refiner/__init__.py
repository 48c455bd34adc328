"""Stage M: the TSD-SR one-step diffusion refiner on SD3 (diffusers + peft are imported on first use)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "TSDSRRefiner": "sr4.refiner.tsdsr",
    "RefinerConfig": "sr4.refiner.tsdsr",
    "validate_model_folder": "sr4.refiner.folder",
    "ModelFolderError": "sr4.refiner.folder",
    "LoraError": "sr4.refiner.lora",
    "apply_color_fix": "sr4.refiner.colorfix",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sr4.refiner' has no attribute {name!r}")
