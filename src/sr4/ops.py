"""8-bit steps between pipeline stages, shared by inference and training.

SNUCV feeds the refiner the upsampler's output rounded to 8 bits, round(x*255)/255 (its images pass through
8-bit files); training passes the gradient through that rounding with a straight-through estimator. TSD-SR's
post-processing truncates to 8 bits where torchvision's ToPILImage does (``x.mul(255).byte()``).
"""

from __future__ import annotations

from typing import Any, cast

import torch


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255) / 255

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def quantize_8bit_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x*255)/255 in the forward pass, identity gradient in the backward pass (not clamped)."""
    return cast(torch.Tensor, _RoundSTE.apply(x))


def truncate_8bit(x: torch.Tensor) -> torch.Tensor:
    """x -> floor(x*255)/255: what torchvision's ToPILImage (x.mul(255).byte()) then ToTensor give."""
    return torch.floor(x.clamp(0.0, 1.0) * 255) / 255
