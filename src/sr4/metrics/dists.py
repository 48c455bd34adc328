"""DISTS (Ding et al. 2020), as pyiqa v0.1.13 computes it.

Recipe: inputs in [0, 1] normalised with ImageNet mean/std; VGG16 features where every max-pool
is replaced by "L2 pooling" (square, 3x3 Hann-window blur with stride 2 and padding 1 per channel,
``sqrt(. + 1e-12)``); taps = the input itself and relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
(3+64+128+256+512+512 = 1475 channels). Per channel, with global means/variances/covariance:
``S1 = (2 mx my + c) / (mx^2 + my^2 + c)``, ``S2 = (2 cov + c) / (vx + vy + c)``, c = 1e-6;
``DISTS = 1 - sum(alpha S1 + beta S2)`` with alpha, beta normalised by their joint sum.

Weights: pyiqa's ``DISTS_weights-f5e65c96.pth`` (``alpha``, ``beta`` of shape (1, 1475, 1, 1),
possibly the trunk as ``stage<s>.<i>.*``) plus torchvision's ``vgg16-397923af.pth`` when the trunk
is not in it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sr4.metrics.backbones import vgg16_features
from sr4.metrics.weights import DISTS_W, VGG16, WeightsError, assign, read_state_dict, require_filled, resolve_root

CHANNELS = (3, 64, 128, 256, 512, 512)
VERSION = "DISTS (pyiqa 0.1.13 semantics)"
# VGG16 feature indices per stage; the max-pools (4, 9, 16, 23) become L2 pooling.
_STAGES = [(0, 4), (5, 9), (10, 16), (17, 23), (24, 30)]
_POOLS = {1: (4, 64), 2: (9, 128), 3: (16, 256), 4: (23, 512)}


class L2Pool(nn.Module):
    filter: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = np.hanning(5)[1:-1]
        g = torch.tensor(np.outer(a, a), dtype=torch.float32)
        g = g / g.sum()
        self.register_buffer("filter", g[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS. ``DISTS()`` has random weights; use ``DISTS.from_pretrained`` for real ones.

    ``forward(x, y)``: (B, 3, H, W) in [0, 1] -> (B,) distances (0 for identical images).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        layers = vgg16_features()
        for s, (a, b) in enumerate(_STAGES):
            seq = nn.Sequential()
            if s in _POOLS:
                idx, ch = _POOLS[s]
                seq.add_module(str(idx), L2Pool(ch))
            for i in range(a, b):
                seq.add_module(str(i), layers[i])
            setattr(self, f"stage{s + 1}", seq)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1))
        gen = torch.Generator().manual_seed(0)
        self.alpha = nn.Parameter(0.1 + 0.01 * torch.randn(1, sum(CHANNELS), 1, 1, generator=gen))
        self.beta = nn.Parameter(0.1 + 0.01 * torch.randn(1, sum(CHANNELS), 1, 1, generator=gen))
        self.requires_grad_(False)
        self.eval()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        feats = [x]
        for s in range(1, 6):
            h = getattr(self, f"stage{s}")(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            shapes = f"{tuple(x.shape)} and {tuple(y.shape)}"
            raise ValueError(f"DISTS expects two (B, 3, H, W) tensors of one shape, got {shapes}")
        c1 = c2 = 1e-6
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, list(CHANNELS), dim=1)
        betas = torch.split(self.beta / w_sum, list(CHANNELS), dim=1)
        d1: Any = 0
        d2: Any = 0
        for fx, fy, a, b in zip(self._features(x), self._features(y), alphas, betas):
            mx = fx.mean((2, 3), keepdim=True)
            my = fy.mean((2, 3), keepdim=True)
            s1 = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            vx = ((fx - mx) ** 2).mean((2, 3), keepdim=True)
            vy = ((fy - my) ** 2).mean((2, 3), keepdim=True)
            cov = (fx * fy).mean((2, 3), keepdim=True) - mx * my
            s2 = (2 * cov + c2) / (vx + vy + c2)
            d1 = d1 + (a * s1).sum(1, keepdim=True)
            d2 = d2 + (b * s2).sum(1, keepdim=True)
        return (1 - (d1 + d2))[:, 0, 0, 0]

    def load_files(self, dists_file: str | os.PathLike, backbone_file: str | os.PathLike | None = None) -> DISTS:
        filled: set[str] = set()
        dp = Path(dists_file)
        tensors = read_state_dict(dp)
        if "alpha" not in tensors or "beta" not in tensors:
            raise WeightsError(f"{dp}: no 'alpha'/'beta' tensors; not a DISTS weight file")
        assign(self, tensors, dp, filled)
        if any(k.startswith("stage") and k not in filled and not k.endswith(".filter") for k in self.state_dict()):
            if backbone_file is None:
                raise WeightsError(f"{dp} has no VGG16 trunk and no {VGG16.name} was given")
            bp = Path(backbone_file)
            where = {i: f"stage{s + 1}.{i}" for s, (a, b) in enumerate(_STAGES) for i in range(a, b)}
            mapped = {}
            for key, value in read_state_dict(bp).items():
                parts = key.split(".")
                if len(parts) == 3 and parts[0] == "features" and int(parts[1]) in where:
                    mapped[f"{where[int(parts[1])]}.{parts[2]}"] = value
            assign(self, mapped, bp, filled)
        require_filled(self, filled, f"DISTS from {dp}")
        return self

    @classmethod
    def from_pretrained(cls, weights_dir: str | os.PathLike | None = None) -> DISTS:
        root = resolve_root(weights_dir)
        dp = DISTS_W.find(root)
        if dp is None:
            raise WeightsError(f"DISTS weights not found: {DISTS_W.candidates(root)[0]}")
        return cls().load_files(dp, VGG16.find(root))
