"""Tiling for the refiner: latent tiles for the transformer, and tiled VAE encode/decode.

Latent tiles follow TSD-SR's `tile_sample`: square tiles of `tile` latents (shrunk to the short
side when the latent is smaller), offsets k*(tile-overlap) with the last tile flush against the
far edge, v blended with a Gaussian window (variance 0.01 of the normalised tile) and divided
by the summed weights. One tile is run at a time, so transformer memory is set by the tile.

VAE tiles: every tile is a "core" block of the output plus a halo of context around it; the net
runs on core+halo and only the core is kept, so no blending is needed. GroupNorm layers inside
the tiles do not use per-tile statistics (which would shift colours tile by tile). Here (sr4's
"fast" mode, after the idea of the hook's fast mode, which TSD-SR's script leaves off) their
per-group mean/variance come from one pass over a downscaled copy of the whole input, so memory is
bounded by the tile size plus that copy; `vae_exact.py` has the exact mode, `vae_tsdsr.py` TSD-SR's.
Approximations: statistics of a downscaled image, a halo shorter than the receptive field, and the
VAE mid-block attention seeing one tile, not the image.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- latent tiles


def gaussian_tile_weights(height: int, width: int) -> torch.Tensor:
    """TSD-SR's blending window (float64, (height, width)).

    Quirk kept from the original: the column centre is (width-1)/2 but the row centre height/2,
    so the window is half a latent off-centre vertically. It only changes blend weights slightly.
    """
    var = 0.01

    def profile(n: int, mid: float) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float64)
        return torch.exp(-((pos - mid) ** 2) / (n * n) / (2 * var)) / math.sqrt(2 * math.pi * var)

    return torch.outer(profile(height, height / 2), profile(width, (width - 1) / 2))


def tile_offsets(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with `tile`-long windows, as TSD-SR lays out its grid."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    count = 0
    covered = 0
    while covered < length:
        covered = max(count * stride, 0) + tile
        count += 1
    return [k * stride for k in range(count - 1)] + [length - tile]


def run_latent_tiles(
    fn: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    tile: int,
    overlap: int,
    max_side: int | None = None,
) -> torch.Tensor:
    """Apply `fn` (latent -> v, same shape) over Gaussian-blended tiles; differentiable.

    Runs in one call when the latent area fits one tile (TSD-SR's rule) and, unlike TSD-SR, also
    requires each side to fit `max_side` (SD3's positional-embedding grid), so thin images tile
    instead of failing. Tiles shrunk to a thin latent keep the overlap, as TSD-SR's `tile_sample`.
    """
    h, w = z.shape[-2:]
    if h * w <= tile * tile and (max_side is None or max(h, w) <= max_side):
        return fn(z)
    size = min(tile, h, w, max_side or tile)  # a tile must fit the positional grid too
    # A tile shrunk to a thin latent keeps TSD-SR's overlap (12 x 350: 12-latent tiles, overlap 8, stride 4).
    # Only where that leaves no stride (a side <= the overlap), where TSD-SR's grid loop never ends, is it halved.
    if overlap >= size:
        overlap = size // 2
    # As TSD-SR: float32 sums of float64 weighted terms, tiles visited column by column, so the blend
    # rounds as the official one does.
    window = gaussian_tile_weights(size, size).to(device=z.device)
    acc = torch.zeros(z.shape, device=z.device, dtype=torch.float32)
    weight = torch.zeros((h, w), device=z.device, dtype=torch.float32)
    for left in tile_offsets(w, size, overlap):
        for top in tile_offsets(h, size, overlap):
            v = fn(z[..., top:top + size, left:left + size])
            acc[..., top:top + size, left:left + size] += v.float() * window
            weight[top:top + size, left:left + size] += window
    return (acc / weight).to(z.dtype)


# ----------------------------------------------------------------------------- VAE tiles


@dataclass(frozen=True)
class Span:
    """A tile along one axis: input [start, stop), kept core [core_start, core_stop) (input units)."""

    start: int
    stop: int
    core_start: int
    core_stop: int


def plan_spans(length: int, core: int, halo: int, align: int = 1) -> list[Span]:
    """Cut [0, length) into cores of `core` units (multiples of `align`) with `halo` context each side."""
    if core <= 0 or core % align:
        raise ValueError(f"VAE tile core {core} must be a positive multiple of {align}")
    halo = -(-halo // align) * align  # halo is rounded up so every tile starts on the alignment grid
    spans = []
    for c0 in range(0, length, core):
        c1 = min(c0 + core, length)
        if length - c1 < align:  # fold a remainder shorter than one aligned unit into the last core
            c1 = length
        spans.append(Span(max(0, c0 - halo), min(length, c1 + halo), c0, c1))
        if c1 == length:
            break
    return spans


class GroupNormStats:
    """Hooks every GroupNorm of a module while `patched()` is open: record per-group statistics, or
    normalise with stored ones.

    mode "record": normal GroupNorm, remembering each layer's per-sample, per-group mean/var.
    mode "apply": normalise with the stored statistics (batch, groups, 1), whatever the input (a tile).
    The hooks act only in the thread that opened `patched()`, so concurrent calls on one model (other
    images, other tilings) each keep their own statistics; the modules themselves are not modified.
    """

    def __init__(self, net: nn.Module, *, groups: int | None = None, eps: float | None = None):
        self.layers = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
        self.groups = groups  # None: each layer's own; TSD-SR's tiled VAE imposes 32 groups and eps 1e-6
        self.eps = eps
        self.mode = "record"
        self.stats: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)

    @contextlib.contextmanager
    def patched(self) -> Iterator[GroupNormStats]:
        owner = threading.get_ident()
        handles = [layer.register_forward_hook(self._make_hook(index, owner))
                   for index, layer in enumerate(self.layers)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _make_hook(self, index: int, owner: int) -> Callable[..., torch.Tensor | None]:
        def hook(layer: nn.GroupNorm, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            if threading.get_ident() != owner:
                return None  # another thread's call: leave its GroupNorm alone
            x = args[0]
            b, c = x.shape[:2]
            grouped = x.float().reshape(b, self.groups or layer.num_groups, -1)
            if self.mode == "record":
                mean = grouped.mean(-1, keepdim=True)  # per sample, as GroupNorm
                var = grouped.var(-1, unbiased=False, keepdim=True)
                self.stats[index] = (mean.detach(), var.detach())
                return None
            stored = self.stats[index]
            if stored is None:
                raise RuntimeError("GroupNorm statistics were not recorded before the tiled pass")
            mean, var = stored
            eps = layer.eps if self.eps is None else self.eps
            out = ((grouped - mean) * torch.rsqrt(var + eps)).reshape(x.shape).to(x.dtype)
            if layer.affine:
                shape = (1, c) + (1,) * (x.dim() - 2)
                out = out * layer.weight.reshape(shape) + layer.bias.reshape(shape)
            return out

        return hook


@dataclass(frozen=True)
class VAETileConfig:
    """Tile sizes in the net's input units (pixels for the encoder, latents for the decoder)."""

    tile: int
    halo: int
    align: int  # tile starts must fall on this grid (8 px for the encoder so latents line up)
    scale: float  # output units per input unit (1/8 encoder, 8 decoder)
    stat_size: int  # long side of the downscaled copy that gives the GroupNorm statistics


def vae_tile_grid(h: int, w: int, cfg: VAETileConfig) -> tuple[list[Span], list[Span]]:
    """Row and column spans of the VAE tiles of an h x w input."""
    core = (cfg.tile - 2 * cfg.halo) // cfg.align * cfg.align
    if core < cfg.align:
        raise ValueError(f"VAE tile {cfg.tile} leaves no core after a halo of {cfg.halo} on each side; "
                         f"use a tile of at least {2 * cfg.halo + cfg.align}")
    return plan_spans(h, core, cfg.halo, cfg.align), plan_spans(w, core, cfg.halo, cfg.align)


def run_vae_tiled(net: Callable[[torch.Tensor], torch.Tensor], modules: nn.Module, x: torch.Tensor,
                  cfg: VAETileConfig) -> torch.Tensor:
    """Run a convolutional VAE half tile by tile, every tile normalised with shared GroupNorm statistics.

    Exact (up to float rounding) when the statistics pass sees the whole input (stat_size >= its
    long side), the halo covers the net's receptive field and the net has no global attention.
    """
    h, w = x.shape[-2:]
    rows, cols = vae_tile_grid(h, w, cfg)
    stats = GroupNormStats(modules)
    with stats.patched():
        with torch.no_grad():  # the statistics are constants: no gradient flows through them
            stats.mode = "record"
            factor = min(1.0, cfg.stat_size / max(h, w))
            small = x
            if factor < 1.0:
                size = (max(cfg.align, round(h * factor / cfg.align) * cfg.align),
                        max(cfg.align, round(w * factor / cfg.align) * cfg.align))
                small = F.interpolate(x, size=size, mode="area")
            net(small)
        stats.mode = "apply"
        # The cores tile the output exactly, in order: each is copied into one output buffer as it comes, so
        # memory beyond the tile is the output alone (not rows of views holding whole tiles, then a copy).
        heights = [crop_core_size(r, cfg.scale) for r in rows]
        widths = [crop_core_size(c, cfg.scale) for c in cols]
        out: torch.Tensor | None = None  # made at the first tile, which tells the channels and dtype
        top = 0
        for r, height in zip(rows, heights, strict=True):
            left = 0
            for c, width in zip(cols, widths, strict=True):
                core = crop_core(net(x[..., r.start:r.stop, c.start:c.stop]), r, c, cfg.scale)
                if out is None:
                    out = core.new_empty((*core.shape[:-2], sum(heights), sum(widths)))
                out[..., top:top + height, left:left + width] = core
                left += width
            top += height
        assert out is not None  # a grid has at least one tile
        return out


def _core_bounds(s: Span, scale: float) -> tuple[int, int]:
    """Where a tile's core lies in the tile's output, along one axis."""
    first = math.floor((s.core_start - s.start) * scale)
    last = math.floor(s.core_stop * scale) - math.floor(s.start * scale)
    return first, last


def crop_core_size(s: Span, scale: float) -> int:
    first, last = _core_bounds(s, scale)
    return last - first


def crop_core(y: torch.Tensor, r: Span, c: Span, scale: float) -> torch.Tensor:
    t0, t1 = _core_bounds(r, scale)
    l0, l1 = _core_bounds(c, scale)
    return y[..., t0:t1, l0:l1]
