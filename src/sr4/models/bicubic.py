"""Plain bicubic interpolation as a registered model: what `--model bicubic` runs (no weights, no randomness)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sr4.models.descriptor import ModelDescriptor, ModelTiling, SizeRequirements, all_dtypes
from sr4.models.registry import Architecture

if TYPE_CHECKING:
    from torch import nn

    from sr4.models.registry import StateDict

#: the `model` value (Python API, `--model`) that asks for plain bicubic x4.
BICUBIC = "bicubic"
BICUBIC_NOTICE = ("bicubic: plain bicubic x4 interpolation, no network; leave the model out for sr4's "
                  "bundled default upsampler or pass a MambaIRv2 checkpoint (model=... / --model FILE)")


class BicubicArchitecture(Architecture):
    """PyTorch bicubic (align_corners=False, TSD-SR's upsampling before its refiner) by an integer scale."""

    id = BICUBIC
    name = "bicubic interpolation"
    loads_files = False

    def load(self, state_dict: StateDict, name: str = "checkpoint") -> ModelDescriptor:
        raise ValueError("bicubic interpolation has no weights to load")

    def build(self, **kwargs: Any) -> ModelDescriptor:
        from sr4.networks.bicubic import BicubicUpsampler

        scale = kwargs.pop("scale", 4)
        if kwargs:
            from sr4.errors import ConfigError

            raise ConfigError(f"bicubic: unknown argument(s) {', '.join(map(repr, kwargs))}; valid: scale")
        return self._descriptor(BicubicUpsampler(scale))

    def describe(self, module: nn.Module) -> ModelDescriptor | None:
        from sr4.networks.bicubic import BicubicUpsampler

        return self._descriptor(module) if isinstance(module, BicubicUpsampler) else None

    def _descriptor(self, module: Any) -> ModelDescriptor:
        scale = int(module.scale)
        return ModelDescriptor(model=module, arch=self.arch_id, scale=scale, size_requirements=SizeRequirements(1),
                               supported_dtypes=all_dtypes(), stochastic=False,
                               memory_per_pixel=module.memory_per_pixel, purpose="SR",
                               tiling=ModelTiling.SUPPORTED, hyperparameters={"scale": scale},
                               label=BICUBIC)


BICUBIC_ARCH = BicubicArchitecture()
