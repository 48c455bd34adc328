"""From what a user names (nothing, "bicubic", a checkpoint path, a module) to a `ModelDescriptor`.

The public `sr4.load_upsampler(path)` returns the network itself; everything inside sr4 works on descriptors.
A module given directly is described by its registered architecture when it has one, else by the upsampler
contract for plain modules (`describe_module`), the one place that reads those attributes.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sr4.errors import ConfigError
from sr4.models.bicubic import BICUBIC
from sr4.models.bundled import load_default
from sr4.models.descriptor import ArchId, ModelDescriptor, SizeRequirements
from sr4.models.registry import REGISTRY, NetworkArchitecture, load_file

if TYPE_CHECKING:
    from sr4.models.registry import StateDict

#: what `load_model` accepts.
ModelSpec = None | str | os.PathLike[str] | nn.Module | ModelDescriptor


def load_model(spec: ModelSpec = None, *, key: str | None = None) -> ModelDescriptor:
    """None: sr4's bundled default (checked by sha256); "bicubic": plain bicubic x4; a path: a checkpoint of a
    registered architecture (detected from its keys); an `nn.Module`: that module (see `describe_module`); a
    descriptor: itself. Loaded models are on the CPU in float32, in eval mode."""
    if spec is None:
        return load_default()
    if isinstance(spec, ModelDescriptor):
        return spec
    if isinstance(spec, nn.Module):
        return describe_module(spec)
    if isinstance(spec, str) and spec == BICUBIC:
        return REGISTRY.get(BICUBIC).build(scale=4)
    if isinstance(spec, (str, os.PathLike)):
        descriptor = load_file(Path(spec), key=key)
        descriptor.model.float().eval()
        return dataclasses.replace(descriptor, label=f"the model {spec}")
    raise TypeError(f"model must be None (bundled default), 'bicubic', a checkpoint path or an nn.Module, "
                    f"got {type(spec).__name__}")


def load_upsampler(path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   key: str | None = None) -> nn.Module:
    """Read a checkpoint of a registered architecture (MambaIRv2, MambaIRv2-Light) and return the network in eval
    mode on ``device``. ``dtype`` None means float32 (whatever precision the file stores); ``key`` picks a
    wrapper entry (`sr4.checkpoints.read_state_dict`)."""
    model = load_file(Path(path), key=key).model
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def _accepts_generator(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def describe_module(module: nn.Module) -> ModelDescriptor:
    """The descriptor of a module: from its registered architecture, or for any other module from the upsampler
    contract: an integer ``scale`` (required), ``min_size`` (default 1), ``forward(x, generator=None)`` when it
    draws random numbers, ``noise_draws(h, w, batch)`` and ``memory_per_pixel`` when it states them."""
    found = REGISTRY.describe(module)
    if found is not None:
        return found
    scale = getattr(module, "scale", None)
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ConfigError(f"upsampler {type(module).__name__} has no positive integer `scale` attribute")
    draws = getattr(module, "noise_draws", None)
    memory = getattr(module, "memory_per_pixel", None)
    return ModelDescriptor(
        model=module, arch=ArchId(type(module).__name__, type(module).__name__), scale=scale,
        size_requirements=SizeRequirements(minimum=int(getattr(module, "min_size", 1))),
        stochastic=_accepts_generator(module), noise_draws=draws if callable(draws) else None,
        memory_per_pixel=None if memory is None else float(memory), label=f"the model {type(module).__name__}")


# ----------------------------------------------------------------------------- hyperparameters of a file


@dataclass
class UpsamplerConfig:
    """A registered architecture's id and the constructor arguments read from a checkpoint."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def _architecture(self) -> NetworkArchitecture:
        arch = REGISTRY.get(self.arch)
        if not isinstance(arch, NetworkArchitecture):
            raise ConfigError(f"{self.arch} is not built from constructor arguments")
        return arch

    @property
    def scale(self) -> int:
        return self._architecture().scale_of(self.kwargs)

    def build(self) -> nn.Module:
        return self._architecture().build_module(**self.kwargs)


def detect_upsampler(state_dict: StateDict, name: str = "checkpoint") -> UpsamplerConfig:
    """The architecture of a state dict and every constructor argument its shapes tell (not ``img_range``, 1.0)."""
    arch = REGISTRY.detect(state_dict, name)
    if not isinstance(arch, NetworkArchitecture):
        return UpsamplerConfig(arch.id, {})
    return UpsamplerConfig(arch.id, arch.hyperparameters(state_dict, name))
