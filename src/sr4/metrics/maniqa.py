"""MANIQA (Yang et al., CVPRW 2022) as ``pyiqa.create_metric('maniqa')`` computes it in pyiqa 0.1.13.

``create_metric('maniqa')`` is the KonIQ-10k model: ``train_dataset='koniq'`` (file
``ckpt_koniq10k.pt``) with ``scale=0.8``; every other argument is the class default (ViT-B/8,
embed 768, 2 transposed-attention blocks per stage, Swin depths (2, 2), heads (4, 4), window 4,
MLP width 768, 20 test crops). The model is in eval mode, so dropout is inactive.

Recipe for one image (values in [0, 1]):

1. ``(x - 0.5) / 0.5`` (pyiqa's "Inception" mean/std).
2. Deterministic crops (no randomness at test time): when ``min(H, W) <= 224`` the image is first
   resized with ``F.interpolate(scale_factor=225 / min(H, W), mode='bilinear')`` (align_corners
   False, no antialias). With ``n = 20`` crops of 224x224: ``step_h = (H - 224) // int(sqrt(n))``,
   ``step_w`` likewise; the crop tops/lefts are ``i * step_h`` / ``j * step_w`` on a
   ``ceil(sqrt(n))``-square grid taken row by row, keeping the first ``n``: for n = 20 rows
   i = 0..3 with columns j = 0..4.
3. Each crop through the ViT-B/8 (785 tokens); the token sequences after blocks 6, 7, 8, 9 (of
   12, 0-based) without the class token are concatenated on channels: (784, 4 * 768).
4. Stage 1: two transposed-attention blocks (attention between channels, the linear maps act on
   the 784 positions), 1x1 conv 3072 -> 768, Swin group; stage 2: two more transposed-attention
   blocks, 1x1 conv 768 -> 384, Swin group.
5. Per position: score = ReLU(fc(ReLU(fc(f)))) and weight = sigmoid(fc(ReLU(fc(f)))). The image's
   quality is sum(weight * score) / (sum(weight) + 1e-8) over all positions of all 20 crops.

The checkpoint is a state dict of pyiqa's whole module, loaded strictly over timm's ViT, so it
already holds every ViT tensor (``vit.*``): timm's ``vit_base_patch8_224`` ImageNet download that
pyiqa triggers at construction is overwritten and is not needed here.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sr4.metrics.maniqa_blocks import SwinGroup, ViTTrunk
from sr4.metrics.weights import MANIQA_KONIQ, WeightsError, assign, read_state_dict, require_filled, resolve_root

VERSION = "MANIQA koniq (pyiqa 0.1.13 semantics)"
WEIGHT_FILES = {MANIQA_KONIQ.name: "MANIQA KonIQ-10k checkpoint: pyiqa's whole MANIQA state dict, ViT-B/8 included"}
CROP = 224  # pyiqa crops 224x224 whatever the configuration
_MEAN = 0.5
_STD = 0.5


@dataclass(frozen=True)
class MANIQAConfig:
    """Defaults are the real ``create_metric('maniqa')`` network."""

    embed_dim: int = 768
    vit_depth: int = 10  # blocks built; pyiqa's ViT has 12 but only blocks 6-9 are read
    vit_heads: int = 12
    vit_mlp: int = 3072
    patch_size: int = 8
    taps: tuple[int, ...] = (6, 7, 8, 9)
    num_tab: int = 2
    swin_depths: tuple[int, ...] = (2, 2)
    swin_heads: tuple[int, ...] = (4, 4)
    window_size: int = 4
    dim_mlp: int = 768
    scale: float = 0.8  # pyiqa's 'maniqa' (koniq) config; the class default 0.13 is not used
    test_sample: int = 20
    num_outputs: int = 1

    @property
    def grid(self) -> int:
        return CROP // self.patch_size


class TABlock(nn.Module):
    """Attention between channels; q/k/v are linear maps over the positions of each channel."""

    def __init__(self, positions: int) -> None:
        super().__init__()
        self.c_q = nn.Linear(positions, positions)
        self.c_k = nn.Linear(positions, positions)
        self.c_v = nn.Linear(positions, positions)
        self.norm_fact = positions**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        attn = (self.c_q(x) @ self.c_k(x).transpose(-2, -1) * self.norm_fact).softmax(dim=-1)
        # pyiqa reshapes the (B, N, C) transpose straight back to (B, C, N): a reshuffle, not a transpose.
        return (attn @ self.c_v(x)).transpose(1, 2).reshape(b, c, n) + x


def _head(dim: int, outputs: int, last: nn.Module) -> nn.Sequential:
    # Slot 2 is pyiqa's Dropout (inactive in eval); keeping it keeps the file's indices 0 and 3.
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Identity(), nn.Linear(dim, outputs), last)


def uniform_crops(x: torch.Tensor, n: int, size: int = CROP) -> torch.Tensor:
    """(B, C, H, W) -> (B * n, C, size, size), image-major, as pyiqa's test-time ``uniform_crop``."""
    h, w = x.shape[-2:]
    if min(h, w) <= size:
        x = F.interpolate(x, scale_factor=(size + 1) / min(h, w), mode="bilinear")
        h, w = x.shape[-2:]
    per_axis = int(math.sqrt(n))
    step_h, step_w = (h - size) // per_axis, (w - size) // per_axis
    grid = math.ceil(math.sqrt(n))
    tops_lefts = [(i * step_h, j * step_w) for i in range(grid) for j in range(grid)][:n]
    crops = [x[..., t : t + size, l : l + size] for t, l in tops_lefts]
    return torch.stack(crops, dim=1).reshape(x.shape[0] * n, x.shape[1], size, size)


class MANIQA(nn.Module):
    """MANIQA KonIQ. ``MANIQA()`` has random weights; ``MANIQA.from_pretrained`` reads the real file.

    ``forward(x)``: (B, 3, H, W) in [0, 1] -> (B,) quality scores (higher is better, about 0..1).
    """

    def __init__(self, config: MANIQAConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or MANIQAConfig()
        if len(cfg.taps) != 4 or max(cfg.taps) >= cfg.vit_depth:
            raise ValueError(f"MANIQA needs 4 ViT taps below vit_depth={cfg.vit_depth}, got {cfg.taps}")
        d, g = cfg.embed_dim, cfg.grid
        self.vit = ViTTrunk(d, cfg.vit_depth, cfg.vit_heads, cfg.vit_mlp, cfg.patch_size, CROP)
        swin: dict[str, Any] = dict(resolution=(g, g), depths=cfg.swin_depths, num_heads=cfg.swin_heads,
                                    window=cfg.window_size, mlp_hidden=cfg.dim_mlp, scale=cfg.scale)
        self.tablock1 = nn.ModuleList(TABlock(g * g) for _ in range(cfg.num_tab))
        self.conv1 = nn.Conv2d(4 * d, d, 1)
        self.swintransformer1 = SwinGroup(d, **swin)
        self.tablock2 = nn.ModuleList(TABlock(g * g) for _ in range(cfg.num_tab))
        self.conv2 = nn.Conv2d(d, d // 2, 1)
        self.swintransformer2 = SwinGroup(d // 2, **swin)
        self.fc_score = _head(d // 2, cfg.num_outputs, nn.ReLU())
        self.fc_weight = _head(d // 2, cfg.num_outputs, nn.Sigmoid())
        self.requires_grad_(False)
        self.eval()

    def _crop_scores(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, 3, 224, 224) normalised crops -> per-position (score, weight), each (K, positions * outputs)."""
        g = self.config.grid
        x = torch.cat([t[:, 1:] for t in self.vit(crops, self.config.taps)], dim=2).transpose(1, 2)
        for tab in self.tablock1:
            x = tab(x)
        x = self.swintransformer1(self.conv1(x.unflatten(2, (g, g))))
        x = x.flatten(2)
        for tab in self.tablock2:
            x = tab(x)
        x = self.swintransformer2(self.conv2(x.unflatten(2, (g, g))))
        x = x.flatten(2).transpose(1, 2)
        return self.fc_score(x).flatten(1), self.fc_weight(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"MANIQA expects a (B, 3, H, W) tensor, got {tuple(x.shape)}")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"MANIQA expects values in [0, 1], got [{float(x.min()):.4g}, {float(x.max()):.4g}]")
        x = (x - _MEAN) / _STD
        scores = []
        # One image's crops at a time bounds memory; every crop is processed independently anyway.
        for img in x.split(1):
            s, w = self._crop_scores(uniform_crops(img, self.config.test_sample))
            s, w = s.reshape(1, -1), w.reshape(1, -1)
            scores.append((w * s).sum(dim=-1) / (w.sum(dim=-1) + 1e-8))
        return torch.cat(scores)

    # ---- loading -------------------------------------------------------------------------------

    @staticmethod
    def config_from_state_dict(tensors: Mapping[str, torch.Tensor], source: str = "weights",
                               **overrides: object) -> MANIQAConfig:
        """Read the architecture from tensor shapes; ``overrides`` set what shapes cannot tell
        (``vit_heads``: default width // 64, as ViT-B; ``scale``, ``test_sample``, ``taps``)."""

        def shape(key: str) -> tuple[int, ...]:
            if key not in tensors:
                raise WeightsError(f"{source}: {key} missing; not a MANIQA checkpoint")
            return tuple(tensors[key].shape)

        def count(pattern: str) -> int:
            found = {int(m.group(1)) for k in tensors if (m := re.fullmatch(pattern, k))}
            return max(found) + 1 if found else 0

        embed = shape("conv1.weight")[0]
        patch = shape("vit.patch_embed.proj.weight")[-1]
        positions = shape("tablock1.0.c_q.weight")[0]
        if positions != (CROP // patch) ** 2:
            raise WeightsError(f"{source}: tablock width {positions} does not fit {CROP}px crops of {patch}px patches")
        n_layers = count(r"swintransformer1\.layers\.(\d+)\..*")
        depths = tuple(count(rf"swintransformer1\.layers\.{i}\.blocks\.(\d+)\..*") for i in range(n_layers))
        tables = [shape(f"swintransformer1.layers.{i}.blocks.0.attn.relative_position_bias_table")
                  for i in range(n_layers)]
        window = (math.isqrt(tables[0][0]) + 1) // 2
        found: dict[str, object] = dict(
            embed_dim=embed,
            vit_heads=max(1, embed // 64),
            vit_mlp=shape("vit.blocks.0.mlp.fc1.weight")[0],
            patch_size=patch,
            num_tab=count(r"tablock1\.(\d+)\..*"),
            swin_depths=depths,
            swin_heads=tuple(t[1] for t in tables),
            window_size=window,
            dim_mlp=shape("swintransformer1.layers.0.blocks.0.mlp.fc1.weight")[0],
            num_outputs=shape("fc_score.3.weight")[0],
        )
        known = {f.name for f in fields(MANIQAConfig)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown MANIQA config fields: {', '.join(sorted(unknown))}")
        found.update(overrides)
        taps: tuple[int, ...] = tuple(found.get("taps", MANIQAConfig.taps))  # type: ignore[arg-type]
        vit_blocks = count(r"vit\.blocks\.(\d+)\..*")
        if vit_blocks <= max(taps):
            raise WeightsError(f"{source}: ViT has {vit_blocks} blocks, MANIQA reads block {max(taps)}")
        found["vit_depth"] = max(taps) + 1
        return MANIQAConfig(**found)  # type: ignore[arg-type]

    def load_file(self, path: str | os.PathLike, tensors: Mapping[str, torch.Tensor] | None = None) -> MANIQA:
        """Fill every tensor from pyiqa's checkpoint (shape-checked; extra tensors are ignored)."""
        p = Path(path)
        tensors = read_state_dict(p) if tensors is None else tensors
        filled: set[str] = set()
        assign(self, tensors, p, filled)
        # Window index tables and shift masks are computed on construction; a file's copy (pyiqa
        # loads it strictly) replaces them above when present.
        filled.update(k for k in self.state_dict() if k.endswith((".relative_position_index", ".attn_mask")))
        require_filled(self, filled, f"MANIQA from {p}")
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **overrides: object) -> MANIQA:
        p = Path(path)
        tensors = read_state_dict(p)
        model = cls(cls.config_from_state_dict(tensors, str(p), **overrides))
        return model.load_file(p, tensors).to(device)

    @classmethod
    def from_pretrained(cls, weights_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                        **overrides: object) -> MANIQA:
        """Build from ``ckpt_koniq10k.pt`` under ``weights_dir`` (default: torch's hub dir); never downloads.

        ``overrides`` are MANIQAConfig fields that shapes cannot tell (for non-standard checkpoints).
        """
        root = resolve_root(weights_dir)
        path = MANIQA_KONIQ.find(root)
        if path is None:
            raise WeightsError(f"MANIQA weights not found: {MANIQA_KONIQ.candidates(root)[0]}")
        return cls.from_file(path, device, **overrides)
