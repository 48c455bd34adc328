"""Conversions between pixel arrays (as `sr4.image.io` reads and writes them) and tensors.

Arrays are HxW or HxWxC with C in 1..4 (L, LA, RGB, RGBA), uint8, uint16 or float in [0, 1]; tensors are float32
in [0, 1], channels first. Every part of sr4 that turns pixels into tensors or back goes through here.
"""

from __future__ import annotations

import numpy as np
import torch


def pixel_peak(dtype: np.dtype) -> float | None:
    """The value of white for integer pixels (255, 65535), None for floats (already in [0, 1])."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if np.issubdtype(dtype, np.floating):
        return None
    raise TypeError(f"unsupported array dtype {dtype}; use uint8, uint16 or float in [0, 1]")


def to_float(pixels: np.ndarray) -> np.ndarray:
    """float32 pixels in [0, 1] (integers divided by their peak, floats clipped)."""
    peak = pixel_peak(pixels.dtype)
    if peak is None:
        return np.clip(pixels.astype(np.float32), 0.0, 1.0)
    return pixels.astype(np.float32) / peak


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """HxWxC -> contiguous HxWx3: gray repeated to three channels, alpha dropped."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    c = pixels.shape[2]
    return np.ascontiguousarray(pixels[:, :, :3] if c >= 3 else np.repeat(pixels[:, :, :1], 3, axis=2))


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """HxW or HxWxC (C 1..4) uint8/uint16 -> HxWx3 uint8 (16-bit rounded to the nearest 8-bit level)."""
    if pixels.dtype == np.uint16:
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {pixels.dtype}")
    return to_rgb(pixels)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """HxWxC -> (C, H, W) float32, a contiguous copy (integers scaled to [0, 1], floats kept)."""
    peak = pixel_peak(pixels.dtype)
    t = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float()
    return t if peak is None else t / peak


def to_batch(pixels: np.ndarray) -> torch.Tensor:
    """HxWxC -> (1, C, H, W) float32 (integers scaled to [0, 1], floats kept) in the array's pixel-interleaved
    memory order (channels_last), in which the metrics' reference values were recorded."""
    peak = pixel_peak(pixels.dtype)
    t = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    return t if peak is None else t / peak


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> HxWxC uint8, rounded as an image file would be."""
    return (image.detach().float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
