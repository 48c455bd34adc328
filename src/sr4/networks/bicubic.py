"""Plain bicubic upsampling as a network module (`--model bicubic`, registered in `sr4.models.bicubic`).

Interpolation is PyTorch bicubic with align_corners=False, the same upsampling TSD-SR applies before its refiner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BicubicUpsampler(nn.Module):
    """Parameter-free bicubic upsampling by an integer `scale`."""

    min_size = 1
    #: LR-pixel memory of one forward (input, output and interpolation temporaries), for tiling.
    memory_per_pixel = 64.0 * 4 * 4

    def __init__(self, scale: int = 4):
        super().__init__()
        if int(scale) < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.scale = int(scale)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # No randomness: `generator` exists for the contract only.
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
