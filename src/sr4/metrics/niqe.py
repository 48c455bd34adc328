"""NIQE (Mittal et al., "Making a completely blind image quality analyzer", 2012), computed by sr4.

Semantics follow pyiqa v0.1.13's ``niqe`` metric, which the NTIRE 2025 challenge used:

- the image (RGB in [0, 1], as torchvision's ``to_tensor`` gives it) is reduced to the Y of YIQ,
  ``0.299 R + 0.587 G + 0.114 B`` computed in float32, scaled to [0, 255] and rounded
  (basicsr's ``calculate_niqe`` instead uses the Y of BT.601 YCbCr, 16..235, and ``crop_border``
  is 0 in pyiqa; ``color="ycbcr"`` selects basicsr's variant);
- from there the statistics are float64: the image is cut to whole 96x96 blocks; at two scales
  the image is normalised by a 7x7 Gaussian (sigma 7/6, edge-replicated) local mean and
  deviation, per block 18 features are fitted (AGGD shape/scale of the coefficients and of their
  products with the 4 neighbours), then the image is halved with MATLAB's antialiased bicubic
  ``imresize`` in float32 (pyiqa's resize always casts to float32); the 36-D block features give a
  mean (NaN-ignoring) and covariance (rows with NaN dropped) compared to the pristine model by
  ``sqrt(d^T pinv((C_p + C_d) / 2) d)``.

Float32 steps are kept where pyiqa has them (the Y conversion, the downscale, the float32-rounded
Gaussian window and shape grid): NIQE's AGGD fit is discontinuous where the normalised image is
exactly zero (flat regions), so their rounding can move the score by ~0.01-0.3 on such images.
The Y conversion is a float32 matrix product as in pyiqa, so, as in pyiqa, the few pixels whose Y lies within
float32 rounding of a .5 tie round as the CPU's BLAS kernel decides (FMA or not): on photos with flat regions
that moves NIQE by up to a few 1e-3 from one CPU to another, elsewhere by < 1e-4.
Checked against pyiqa's published calibration values (ResultsCalibra, 5 images): within 5e-5; with
basicsr's float64 window (``niqe_gray(..., pyiqa_window=False)``) it reproduces basicsr 1.4.2's
``niqe()`` within 1e-4 on the test photos, flat ones included.

The pristine model (`sr4/data/niqe_pris_params.npz`: mu 1x36, cov 36x36, the 7x7 window) comes
from basicsr 1.4.2 (Apache-2.0), `basicsr/metrics/niqe_pris_params.npz`, itself the official
MATLAB release's ``modelparameters.mat``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from sr4.image.resize import imresize

BLOCK = 96
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]])
_YCBCR = torch.tensor([[65.481, -37.797, 112.0], [128.553, -74.203, -93.786], [24.966, 112.0, -18.214]])


@dataclass(frozen=True)
class NIQEParams:
    mu: np.ndarray  # (36,)
    cov: np.ndarray  # (36, 36)
    window: np.ndarray  # (7, 7)


@lru_cache(maxsize=1)
def pristine_params() -> NIQEParams:
    """The pristine multivariate Gaussian shipped as package data (read once; treat as read-only)."""
    with resources.files("sr4").joinpath("data").joinpath("niqe_pris_params.npz").open("rb") as fh:
        z = np.load(fh)
        return NIQEParams(
            mu=np.ravel(z["mu_pris_param"]).astype(np.float64),
            cov=z["cov_pris_param"].astype(np.float64),
            window=z["gaussian_window"].astype(np.float64),
        )


def _aggd_table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # The shape grid 0.2:0.001:10 is built in float32 as pyiqa does (the grid values themselves are
    # features, and which grid point wins the argmin depends on them).
    gam = torch.arange(0.2, 10.0 + 0.001, 0.001, dtype=torch.float32, device=device).to(torch.float64)
    r_gam = (2 * torch.lgamma(2.0 / gam) - (torch.lgamma(1.0 / gam) + torch.lgamma(3.0 / gam))).exp()
    return gam, r_gam


def _aggd(blocks: torch.Tensor, table) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Moment-matching fit of an asymmetric generalised Gaussian per block. blocks: (N, h, w)."""
    gam, r_gam = table
    b4 = blocks[:, None]  # (N, 1, h, w): reductions over (-1, -2) as pyiqa, same summation order
    neg, pos = b4 < 0, b4 > 0
    left_std = torch.sqrt((b4 * neg).pow(2).sum(dim=(-1, -2)) / neg.sum(dim=(-1, -2), dtype=torch.float32))[:, 0]
    right_std = torch.sqrt((b4 * pos).pow(2).sum(dim=(-1, -2)) / pos.sum(dim=(-1, -2), dtype=torch.float32))[:, 0]
    gammahat = left_std / right_std
    rhat = (b4.abs().mean(dim=(-1, -2)).pow(2) / b4.pow(2).mean(dim=(-1, -2)))[:, 0]
    rhatnorm = (rhat * (gammahat.pow(3) + 1) * (gammahat + 1)) / (gammahat.pow(2) + 1).pow(2)
    # A NaN rhatnorm (flat block) makes argmin pick a NaN entry's index in pyiqa too; keep parity.
    alpha = gam[(r_gam[None, :] - rhatnorm[:, None]).abs().argmin(dim=1)]
    ratio = (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)).exp().sqrt()
    return alpha, left_std * ratio, right_std * ratio


def _block_features(blocks: torch.Tensor, table) -> torch.Tensor:
    """The 18 NIQE features of each block. blocks: (N, h, w) -> (N, 18)."""
    alpha, bl, br = _aggd(blocks, table)
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        prod = blocks * torch.roll(blocks, shift, dims=(1, 2))
        alpha, bl, br = _aggd(prod, table)
        mean = (br - bl) * (torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha)).exp()
        feats += [alpha, mean, bl, br]
    return torch.stack(feats, dim=1)


def _normalise(img: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """(img - mu) / (sigma + 1) with a Gaussian local mean/deviation; img (H, W) float64."""
    k = window.shape[-1] // 2
    w = window[None, None]

    def filt(a: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(a[None, None], (k, k, k, k), mode="replicate"), w)[0, 0]

    mu = filt(img)
    mu_sq = filt(img**2)
    eps = torch.finfo(torch.float64).eps
    sigma = torch.sqrt((mu_sq - mu * mu).abs() + eps)
    return (img - mu) / (sigma + 1)


def _blocks(img: torch.Tensor, bh: int, bw: int, nh: int, nw: int) -> torch.Tensor:
    return img[: nh * bh, : nw * bw].reshape(nh, bh, nw, bw).permute(2, 0, 1, 3).reshape(nh * nw, bh, bw)


def niqe_gray(img255: torch.Tensor, params: NIQEParams | None = None, *, pyiqa_window: bool = True) -> float:
    """NIQE of a single-channel float64 image on [0, 255] (already rounded if you want pyiqa parity).

    ``pyiqa_window=False`` uses the float64 Gaussian window as basicsr's ``niqe()`` does instead of
    pyiqa's float32-rounded one (the two differ on images with flat regions, see the module doc).
    """
    params = params or pristine_params()
    if img255.ndim != 2:
        raise ValueError(f"niqe_gray expects (H, W), got shape {tuple(img255.shape)}")
    h, w = img255.shape
    nh, nw = h // BLOCK, w // BLOCK
    if nh < 1 or nw < 1:
        raise ValueError(f"NIQE needs an image of at least {BLOCK}x{BLOCK} px, got {w}x{h}")
    dev = img255.device
    img = img255.to(torch.float64)[: nh * BLOCK, : nw * BLOCK]
    # pyiqa builds this 7x7 window with fspecial in float32; the float32 rounding is kept for parity.
    window = torch.as_tensor(params.window, dtype=torch.float32 if pyiqa_window else torch.float64, device=dev)
    window = window.to(torch.float64)
    table = _aggd_table(dev)
    per_scale = []
    for scale in (1, 2):
        norm = _normalise(img, window)
        per_scale.append(_block_features(_blocks(norm, BLOCK // scale, BLOCK // scale, nh, nw), table))
        if scale == 1:
            # float32, as pyiqa's resize always computes (see module docstring).
            img = imresize((img / 255.0).to(torch.float32), 0.5).to(torch.float64) * 255.0
    feats = torch.cat(per_scale, dim=1)  # (blocks, 36)

    valid = ~torch.isnan(feats)
    mu_d = torch.where(valid, feats, torch.zeros_like(feats)).sum(0) / valid.sum(0)
    rows = feats[valid.all(dim=1)]
    cov_d = torch.cov(rows.T, correction=1 if rows.shape[0] > 1 else 0)
    mu_p = torch.as_tensor(params.mu, dtype=torch.float64, device=dev)
    cov_p = torch.as_tensor(params.cov, dtype=torch.float64, device=dev)
    diff = (mu_p - mu_d)[None]
    quality = diff @ torch.linalg.pinv((cov_p + cov_d) / 2) @ diff.T
    return float(torch.sqrt(quality).item())


def to_gray255(img: np.ndarray | torch.Tensor, color: str = "yiq") -> torch.Tensor:
    """Reduce an RGB image to the rounded [0, 255] channel NIQE looks at.

    ``img``: uint8 (H, W[, C]) array, or a float tensor (3|1, H, W) / (1, 3|1, H, W) in [0, 1].
    """
    if color not in ("yiq", "ycbcr"):
        raise ValueError(f"color must be 'yiq' (pyiqa) or 'ycbcr' (basicsr), got {color!r}")
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise TypeError(f"expected an 8-bit image array, got dtype {img.dtype}")
        arr = img[:, :, None] if img.ndim == 2 else img[:, :, :3]
        x = torch.from_numpy(np.array(arr)).permute(2, 0, 1).to(torch.float32) / 255.0
    else:
        x = img.detach()
        if x.ndim == 4:
            if x.shape[0] != 1:
                raise ValueError(f"one image at a time, got a batch of {x.shape[0]}")
            x = x[0]
        x = x.to(torch.float32)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.shape[0] == 3:
        # Full 3x3 products as pyiqa's rgb2yiq / rgb2ycbcr (same BLAS path, same float32 rounding).
        if color == "yiq":
            y = (x[None].permute(0, 2, 3, 1) @ _YIQ.to(x.device).t())[0, :, :, 0] * 255.0
        else:
            y = ((x[None].permute(0, 2, 3, 1) @ _YCBCR.to(x.device))[0, :, :, 0] + 16.0) / 255.0 * 255.0
    else:
        y = x[0] * 255.0
    return torch.round(y).to(torch.float64)


@dataclass(frozen=True)
class NIQEConfig:
    color: str = "yiq"  # "yiq" as pyiqa/the challenge, "ycbcr" as basicsr
    crop_border: int = 0


def niqe(img: np.ndarray | torch.Tensor, cfg: NIQEConfig | None = None) -> float:
    """NIQE of one RGB (or gray) image; lower is better. See the module docstring for the recipe."""
    cfg = cfg or NIQEConfig()
    gray = to_gray255(img, cfg.color)
    b = cfg.crop_border
    if b:
        gray = gray[b:-b, b:-b]
    return niqe_gray(gray)


def version_note() -> str:
    return "sr4 NIQE: pyiqa 0.1.13 semantics (YIQ Y rounded, 96px blocks, MATLAB imresize), basicsr 1.4.2 params"


__all__ = ["NIQEConfig", "NIQEParams", "niqe", "niqe_gray", "pristine_params", "to_gray255", "version_note"]
