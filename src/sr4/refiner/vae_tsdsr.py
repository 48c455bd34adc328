"""TSD-SR's own tiled VAE (Microtreei/TSD-SR `utils/vaehook.py`, its `--is_use_tile` mode), reproduced.

What makes it TSD-SR's, as opposed to sr4's exact tiles (`vae_exact.py`), which stay closer to the untiled VAE:

* the tile size is the tile *without* its padding (32 px for the encoder, 11 latents for the decoder), and
  tiling starts only once a side exceeds tile + 2 x padding;
* each axis is cut into ceil((side - 2 pad) / tile) equal cores, each enlarged to the next multiple of 32
  (then 16, 8, 4, 2) that stays within the tile; the first core starts at the padding, the border cores
  extend to the image border, and every tile reads its core plus the padding around it;
* every GroupNorm uses 32 groups and eps 1e-6 (hard-coded there; SD3's VAE has the same), and the mean and
  variance it normalises with are the averages over tiles of each tile's own statistics, computed over
  the whole padded tile and weighted by its pixel count: not the statistics of the image.

The unrolled steps and the tile-by-tile staging are sr4's (`vae_exact.run_vae_staged`); the result equals
TSD-SR's tiled output up to float rounding (tests/test_refiner_golden.py checks it against the official code).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from sr4.refiner.tiling import Span
from sr4.refiner.vae_exact import Step, run_vae_staged

#: GroupNorm groups and eps TSD-SR's tiled VAE uses for every layer, whatever the layer's own.
TSDSR_GROUPS = 32
TSDSR_EPS = 1e-6


def tsdsr_needs_tiles(height: int, width: int, tile: int, pad: int) -> bool:
    """TSD-SR's switch: tiles only once a side exceeds the tile plus its padding on both sides."""
    return max(height, width) > tile + 2 * pad


def _best_core(lower: int, upper: int) -> int:
    """Round `lower` up to a multiple of 32, else 16, 8, 4, 2, as long as it stays <= upper."""
    divider = 32
    while divider >= 2:
        if lower % divider == 0:
            return lower
        candidate = lower - lower % divider + divider
        if candidate <= upper:
            return candidate
        divider //= 2
    return lower


def tsdsr_spans(length: int, tile: int, pad: int) -> list[Span]:
    """One axis of TSD-SR's tile grid: input [start, stop) and kept core, in input units."""
    count = max(1, math.ceil((length - 2 * pad) / tile))
    core = _best_core(math.ceil((length - 2 * pad) / count), tile)
    spans = []
    for i in range(count):
        c0, c1 = pad + i * core, min(pad + (i + 1) * core, length)
        keep0 = c0 if c0 > pad else 0  # border cores reach the border
        keep1 = c1 if c1 < length - pad else length
        spans.append(Span(max(0, c0 - pad), min(length, c1 + pad), keep0, keep1))
    return spans


class _TileAverage:
    """Per-tile (mean, biased var) over the whole padded tile, averaged with weights = tile pixels."""

    def __init__(self, groups: int):
        self.groups = groups
        self.weighted: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def add(self, act: torch.Tensor, tile: object, scale: float) -> None:
        b, c = act.shape[:2]
        if c % self.groups:
            raise ValueError(f"TSD-SR's tiled VAE needs channels divisible by {self.groups}, got {c}")
        grouped = act.detach().float().reshape(b, self.groups, -1)
        var, mean = torch.var_mean(grouped, dim=-1, unbiased=False)
        self.weighted.append((act.shape[-2] * act.shape[-1], mean, var))

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        total = float(sum(n for n, _, _ in self.weighted))
        # sum() from 0, tile after tile: the order the tiles' statistics are averaged in
        mean = cast(torch.Tensor, sum(m * (n / total) for n, m, _ in self.weighted))
        var = cast(torch.Tensor, sum(v * (n / total) for n, _, v in self.weighted))
        return mean[..., None], var[..., None]


def run_vae_tiled_tsdsr(steps: list[Step], modules: nn.Module, x: torch.Tensor, tile: int, pad: int,
                        out_scale: float, align: int = 1, storage: torch.device | None = None) -> torch.Tensor:
    """TSD-SR's tiled VAE over x (B,C,H,W): `tile` and `pad` in x's units (pixels for the encoder, latents for
    the decoder); align: tiles must start on this grid (the encoder's factor, so latents line up)."""
    rows, cols = tsdsr_spans(x.shape[-2], tile, pad), tsdsr_spans(x.shape[-1], tile, pad)
    misaligned = [s.start for s in rows + cols if s.start % align]
    if misaligned:
        raise ValueError(f"VAE tile {tile} with padding {pad} puts tile starts off the {align}-pixel grid; "
                         f"use a tile that is a multiple of 32")
    return run_vae_staged(steps, modules, x, rows, cols, out_scale, _TileAverage, groups=TSDSR_GROUPS,
                          eps=TSDSR_EPS, storage=storage)
