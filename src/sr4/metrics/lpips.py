"""LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018), as pyiqa v0.1.13 computes it.

Recipe: inputs in [0, 1] -> ``2x - 1`` -> ``(x - shift) / scale`` with shift (-0.030, -0.088, -0.188)
and scale (0.458, 0.448, 0.450); AlexNet activations after the 5 ReLUs (features 1, 4, 7, 9, 11);
each unit-normalised over channels (eps 1e-10); squared difference; a 1x1 conv (no bias) per layer;
spatial mean; summed over layers.

Weights: pyiqa's ``LPIPS_v0.1_alex-df73285e.pth`` (a state dict of pyiqa's LPIPS module: keys
``lin<k>.model.1.weight`` and possibly ``net.slice<s>.<i>.*``) plus, when that file lacks the
trunk, torchvision's ``alexnet-owt-7be5be79.pth`` (``features.<i>.*``). The module is
differentiable with respect to its inputs and keeps its own parameters frozen, so it can serve
as a training loss.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sr4.metrics.backbones import alexnet_features, sliced, torchvision_key_map
from sr4.metrics.weights import (
    ALEXNET,
    LPIPS_ALEX,
    WeightsError,
    assign,
    read_state_dict,
    require_filled,
    resolve_root,
)

ALEX_SLICES = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]
ALEX_CHANNELS = (64, 192, 384, 256, 256)
VERSION = "LPIPS v0.1 alex (pyiqa 0.1.13 semantics)"


class _ScalingLayer(nn.Module):
    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _AlexTrunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        s = sliced(alexnet_features(), ALEX_SLICES)
        self.slice1, self.slice2, self.slice3, self.slice4, self.slice5 = s

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in (self.slice1, self.slice2, self.slice3, self.slice4, self.slice5):
            x = block(x)
            outs.append(x)
        return outs


class _Lin(nn.Module):
    """1x1 conv head; slot 0 is where pyiqa keeps a Dropout (inactive in eval), so keys read model.1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS-Alex v0.1. ``LPIPS()`` has random weights; use ``LPIPS.from_pretrained`` for real ones.

    ``forward(x, y)``: (B, 3, H, W) tensors in [0, 1] -> (B,) distances (0 for identical images).
    """

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = _AlexTrunk()
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (_Lin(c) for c in ALEX_CHANNELS)
        self.requires_grad_(False)
        self.eval()

    @property
    def lins(self) -> list[_Lin]:
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            shapes = f"{tuple(x.shape)} and {tuple(y.shape)}"
            raise ValueError(f"LPIPS expects two (B, 3, H, W) tensors of one shape, got {shapes}")
        fx = self.net(self.scaling_layer(2 * x - 1))
        fy = self.net(self.scaling_layer(2 * y - 1))
        total: Any = 0
        for lin, a, b in zip(self.lins, fx, fy):
            total = total + lin((_unit(a) - _unit(b)) ** 2).mean(dim=(2, 3))
        return total[:, 0]

    def load_files(self, lpips_file: str | os.PathLike, backbone_file: str | os.PathLike | None = None) -> LPIPS:
        """Fill the weights from pyiqa's LPIPS file (and torchvision's AlexNet file when needed)."""
        filled: set[str] = set()
        lp = Path(lpips_file)
        tensors = read_state_dict(lp)
        if not any(k.startswith("lin") for k in tensors):
            raise WeightsError(f"{lp}: no lin<k>.model.1.weight keys; not an LPIPS weight file")
        # pyiqa's module also lists the heads as lins.<k>; files without a dropout slot use model.0.
        renamed: dict[str, torch.Tensor] = {}
        for k, v in tensors.items():
            if k.startswith("lins."):
                k = "lin" + k[len("lins."):]
            if k.startswith("lin"):
                k = k.replace(".model.0.weight", ".model.1.weight")
            renamed.setdefault(k, v)
        tensors = renamed
        assign(self, tensors, lp, filled)
        trunk_missing = any(k.startswith("net.") and k not in filled for k in self.state_dict())
        if trunk_missing:
            if backbone_file is None:
                raise WeightsError(f"{lp} has no AlexNet trunk and no {ALEXNET.name} was given")
            bp = Path(backbone_file)
            mapping = torchvision_key_map(ALEX_SLICES, "net.slice")
            mapped = {}
            for key, value in read_state_dict(bp).items():
                parts = key.split(".")
                if len(parts) == 3 and parts[0] == "features" and int(parts[1]) in mapping:
                    mapped[f"{mapping[int(parts[1])]}.{parts[2]}"] = value
            assign(self, mapped, bp, filled)
        require_filled(self, filled, f"LPIPS from {lp}")
        return self

    @classmethod
    def from_pretrained(cls, weights_dir: str | os.PathLike | None = None) -> LPIPS:
        """Build from local files under ``weights_dir`` (default: torch's hub dir); never downloads."""
        root = resolve_root(weights_dir)
        lp = LPIPS_ALEX.find(root)
        if lp is None:
            raise WeightsError(f"LPIPS weights not found: {LPIPS_ALEX.candidates(root)[0]}")
        return cls().load_files(lp, ALEXNET.find(root))
