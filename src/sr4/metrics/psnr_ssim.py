"""PSNR and SSIM as the NTIRE 2025 x4 challenge computes them (its `utils/utils_image.py`).

Challenge settings (the defaults here): both images 8-bit RGB, cropped to a multiple of 4
("modcrop"), 4 pixels shaved from every border, compared on the Y channel of MATLAB's BT.601
YCbCr in float, Y = (R*65.481 + G*128.553 + B*24.966) / 255 + 16 on [0, 255] input (the challenge
writes it on BGR with the weights reversed); Y is stored in float32 as the challenge's code does,
the statistics are computed in float64. PSNR = 20 log10(255 / sqrt(MSE)); SSIM uses an 11x11
Gaussian window (sigma 1.5), C1 = (0.01*255)^2, C2 = (0.03*255)^2, "valid" filtering only
(5 px lost per side), mean of the map. ``channel="rgb"`` compares the three RGB channels instead
(PSNR on the joint MSE, SSIM averaged over channels); it is not the challenge's setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# BT.601 "studio swing" luma for RGB in [0, 1] -> Y in [16, 235] (MATLAB rgb2ycbcr).
Y_WEIGHTS_RGB = (65.481, 128.553, 24.966)


@dataclass(frozen=True)
class FidelityConfig:
    """How PSNR/SSIM are computed. Defaults are the challenge's."""

    modcrop: int = 4  # crop H and W down to a multiple of this before anything else (1 = off)
    crop_border: int = 4  # pixels removed from each border after modcrop
    channel: str = "y"  # "y" (challenge) or "rgb"

    def __post_init__(self) -> None:
        if self.channel not in ("y", "rgb"):
            raise ValueError(f"channel must be 'y' or 'rgb', got {self.channel!r}")
        if self.modcrop < 1 or self.crop_border < 0:
            raise ValueError(f"modcrop must be >= 1 and crop_border >= 0, got {self.modcrop}, {self.crop_border}")

    def label(self) -> str:
        return f"{self.channel.upper()} channel, modcrop {self.modcrop}, shave {self.crop_border}px"


def as_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|3|4) uint8 -> (H, W, 3) uint8; gray becomes G,G,G and alpha is dropped."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"expected an 8-bit image, got dtype {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W[, 1|3|4]) image, got shape {img.shape}")
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return img[:, :, :3]


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y of MATLAB's rgb2ycbcr for 8-bit RGB, float32 in [16, 235], computed as the challenge does."""
    x = as_rgb_uint8(img).astype(np.float32) / np.float32(255.0)
    y = x.astype(np.float64) @ np.asarray(Y_WEIGHTS_RGB) + 16.0
    return (y / 255.0).astype(np.float32) * np.float32(255.0)


def prepare(img: np.ndarray, cfg: FidelityConfig) -> np.ndarray:
    """Modcrop, shave and convert one image as the metric sees it: (H', W', C) float64."""
    img = as_rgb_uint8(img)
    h, w = img.shape[:2]
    img = img[: h - h % cfg.modcrop, : w - w % cfg.modcrop]
    b = cfg.crop_border
    if b:
        img = img[b:-b, b:-b]
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image of {h}x{w} px is empty after modcrop {cfg.modcrop} and shave {b}")
    if cfg.channel == "y":
        return rgb_to_y(img).astype(np.float64)[:, :, None]
    return img.astype(np.float64)


def _check_pair(sr: np.ndarray, hr: np.ndarray) -> None:
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(f"image sizes differ: SR {sr.shape[1]}x{sr.shape[0]} vs HR {hr.shape[1]}x{hr.shape[0]} (WxH)")


def psnr(sr: np.ndarray, hr: np.ndarray, cfg: FidelityConfig | None = None) -> float:
    """PSNR in dB between two 8-bit images (inf when identical)."""
    cfg = cfg or FidelityConfig()
    _check_pair(sr, hr)
    a, b = prepare(sr, cfg), prepare(hr, cfg)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return math.inf
    return 20.0 * math.log10(255.0 / math.sqrt(mse))


def gaussian_window_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian (what OpenCV's getGaussianKernel returns for sigma > 0)."""
    r = (size - 1) / 2.0
    g = np.exp(-((np.arange(size) - r) ** 2) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation keeping only fully covered pixels (2-D, float64)."""
    k = g.size
    h, w = a.shape
    rows = sum(g[i] * a[i : h - k + 1 + i] for i in range(k))
    return sum(g[j] * rows[:, j : w - k + 1 + j] for j in range(k))


def ssim_channel(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of two single-channel float images on [0, 255]."""
    if min(a.shape) < window:
        raise ValueError(f"SSIM needs at least {window}x{window} px after cropping, got {a.shape[1]}x{a.shape[0]}")
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    g = gaussian_window_1d(window, sigma)
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(sr: np.ndarray, hr: np.ndarray, cfg: FidelityConfig | None = None) -> float:
    """SSIM between two 8-bit images, averaged over the compared channels."""
    cfg = cfg or FidelityConfig()
    _check_pair(sr, hr)
    a, b = prepare(sr, cfg), prepare(hr, cfg)
    return float(np.mean([ssim_channel(a[:, :, c], b[:, :, c]) for c in range(a.shape[2])]))
