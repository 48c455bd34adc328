"""Colour correction of the refined image against the LR input (TSD-SR `--align_method`).

wavelet: keep the SR image's high frequencies and take the low frequencies from the LR image
upsampled to the SR size; the split is 5 levels of a 3x3 binomial blur dilated 1, 2, 4, 8, 16
with replicate padding. adain: match each channel's mean and standard deviation to the LR's.
Both work on float (B,3,H,W) tensors in [0,1], are differentiable, and clamp to [0,1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

COLOR_FIXES = ("none", "wavelet", "adain")


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    kernel = torch.outer(k1, k1).expand(x.shape[1], 1, 3, 3)
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=x.shape[1], dilation=dilation)


def wavelet_split(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with high + low == x: low is x blurred by `levels` dilated passes."""
    low = x
    for level in range(levels):
        low = _blur(low, 2 ** level)
    return x - low, low


def upsample_like_pil(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float, differentiable bicubic resize with Pillow's kernel (a=-0.5, antialiased); Pillow itself
    also rounds to 8 bits between its two passes, which `pil_bicubic` reproduces exactly."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def pil_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's BICUBIC resize of 8-bit images, bit for bit: (B,3,H,W) floats on the k/255 grid ->
    (B,3,*size) on the same grid (not differentiable)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    pixels = (x.detach().clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    resized = [np.asarray(Image.fromarray(p).resize((size[1], size[0]), Image.Resampling.BICUBIC)) for p in pixels]
    out = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)
    return out.to(device=x.device, dtype=torch.float32) / 255


def wavelet_transfer(sr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """SR high frequencies + low frequencies of `reference` (same size as sr), clamped to [0, 1]."""
    high, _ = wavelet_split(sr)
    _, low = wavelet_split(reference.to(sr.dtype))
    return (high + low).clamp(0.0, 1.0)


def wavelet_color_fix(sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """SR high frequencies + low frequencies of the LR image upsampled to the SR size."""
    return wavelet_transfer(sr, upsample_like_pil(lr.to(sr.dtype), (sr.shape[-2], sr.shape[-1])))


def adain_color_fix(sr: torch.Tensor, lr: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-channel mean/std of `sr` replaced by those of `lr` (unbiased variance + eps, as TSD-SR)."""
    def moments(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = t.reshape(t.shape[0], t.shape[1], -1)
        return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]

    sr_mean, sr_std = moments(sr)
    lr_mean, lr_std = moments(lr.to(sr.dtype))
    return ((sr - sr_mean) / sr_std * lr_std + lr_mean).clamp(0.0, 1.0)


def apply_color_fix(method: str, sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    if method == "none":
        return sr
    if method == "wavelet":
        return wavelet_color_fix(sr, lr)
    if method == "adain":
        return adain_color_fix(sr, lr)
    raise ValueError(f"unknown colour fix {method!r}; choose one of {', '.join(COLOR_FIXES)}")
