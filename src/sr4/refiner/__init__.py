"""Stage M: the TSD-SR one-step diffusion refiner on SD3 (diffusers + peft are imported on first use)."""

from __future__ import annotations

from sr4.utils.lazy import lazy_attributes

_LAZY = {
    "TSDSRRefiner": "sr4.refiner.tsdsr",
    "RefinerConfig": "sr4.refiner.tsdsr",
    "validate_model_folder": "sr4.refiner.folder",
    "ModelFolderError": "sr4.refiner.folder",
    "LoraError": "sr4.refiner.lora",
    "apply_color_fix": "sr4.refiner.colorfix",
}

__all__ = list(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
