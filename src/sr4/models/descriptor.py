"""What a caller needs to know to run an image model, stated by the model's architecture, not probed.

After spandrel's ``ImageModelDescriptor``: every model sr4 runs (a registered architecture loaded from a file,
plain bicubic, a network built for training, or a foreign module following the upsampler contract) reaches
`Upscaler`, tiling, the pipelines, `sr4 info` and training as a `ModelDescriptor`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:  # torch loads when a model does: `sr4 info` on the bundled file and `sr4 --help` stay torch-free
    import torch
    from torch import nn

#: what a model is for (spandrel's names): "SR" upscales, "Restoration" keeps the size (denoise, JPEG), "FaceSR"
#: restores faces (GFPGAN, RestoreFormer through spandrel).
Purpose = Literal["SR", "Restoration", "FaceSR"]


def all_dtypes() -> tuple[torch.dtype, ...]:
    """float32, float16 and bfloat16: what a model supports unless its architecture says otherwise."""
    import torch

    return (torch.float32, torch.float16, torch.bfloat16)


def __getattr__(name: str) -> Any:
    if name == "ALL_DTYPES":  # the same tuple under its constant's name, made when first asked for
        return all_dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


NoiseDraws = Callable[[int, int, int], list[int]]


class ModelTiling(enum.Enum):
    """How a model takes being run tile by tile."""

    #: tiles change the result about as much as for any convolutional network: sr4 tiles when memory asks.
    SUPPORTED = "supported"
    #: tiles work but lose the global context the model relies on: one pass unless memory forces tiles.
    DISCOURAGED = "discouraged"
    #: the model tiles itself (or must see the whole image): always one pass.
    INTERNAL = "internal"


@dataclass(frozen=True)
class SizeRequirements:
    """Input sizes the forward accepts: height and width at least `minimum` and multiples of `multiple_of`
    (square when `square`). Callers pad to meet them and crop the result back."""

    minimum: int = 1
    multiple_of: int = 1
    square: bool = False

    def padded(self, height: int, width: int) -> tuple[int, int]:
        """The smallest accepted size at least (height, width)."""
        h, w = max(height, self.minimum), max(width, self.minimum)
        h, w = -(-h // self.multiple_of) * self.multiple_of, -(-w // self.multiple_of) * self.multiple_of
        if self.square:
            h = w = max(h, w)
        return h, w


@dataclass(frozen=True)
class ArchId:
    """A registered architecture: `id` as the registry and files name it, `name` for people."""

    id: str
    name: str


@dataclass(frozen=True)
class ModelDescriptor:
    """A loaded image model: the module and its stated capabilities.

    Calling it runs the forward: ``descriptor(x, generator)`` with x (B, C, H, W) float in [0, 1] ->
    (B, C, H*scale, W*scale). The generator is passed only to `stochastic` models (their random draws come from it,
    or from torch's global RNG when it is None, as in the official code).
    """

    model: nn.Module
    arch: ArchId
    scale: int
    size_requirements: SizeRequirements = SizeRequirements()
    supported_dtypes: tuple[torch.dtype, ...] = field(default_factory=all_dtypes)
    #: takes a generator for random draws made at inference (MambaIRv2's routing noise).
    stochastic: bool = False
    #: random values each random call of a forward over (height, width, batch) draws, in call order; None for a
    #: stochastic model that does not say (then a tiled pass cannot leave the generator where one pass would).
    noise_draws: NoiseDraws | None = None
    #: activation bytes per input pixel of one forward (for automatic tiles); None: estimated from the layers.
    memory_per_pixel: float | None = None
    purpose: Purpose = "SR"
    tiling: ModelTiling = ModelTiling.SUPPORTED
    input_channels: int = 3
    output_channels: int = 3
    #: the constructor arguments (read from the checkpoint or given), for `sr4 info` and reports.
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    #: how messages name the model ("the model weights.pth", "bicubic", ...).
    label: str = "the model"

    def __post_init__(self) -> None:
        if not isinstance(self.scale, int) or isinstance(self.scale, bool) or self.scale < 1:
            raise ValueError(f"{self.label}: scale must be a positive integer, got {self.scale!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = self.model(x, generator=generator) if self.stochastic else self.model(x)
        return cast("torch.Tensor", out)

    def supports(self, dtype: torch.dtype) -> bool:
        return dtype in self.supported_dtypes

    def draws(self, height: int, width: int, batch: int = 1) -> list[int] | None:
        """Random values per random call of one forward (empty for deterministic models; None when not stated)."""
        if not self.stochastic:
            return []
        return None if self.noise_draws is None else self.noise_draws(height, width, batch)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ModelDescriptor:
        """Move the module (in place, as `nn.Module.to`) and return self. Which dtypes a caller may choose is
        `supported_dtypes` (`sr4.utils.device.resolve_dtype` checks it)."""
        self.model.to(device=device, dtype=dtype)
        return self

    def with_model(self, model: nn.Module) -> ModelDescriptor:
        """The same description for another instance of the same network (e.g. its float32 copy)."""
        return dataclasses.replace(self, model=model)
