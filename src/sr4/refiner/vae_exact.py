"""VAE tiles with exact GroupNorm statistics, stage by stage (sr4's "exact" mode; TSD-SR's own tiled VAE,
which averages per-tile statistics instead, is `vae_tsdsr.py`, on the same staged runner).

A GroupNorm needs the mean/variance of the whole feature map, which no single tile has. So the
diffusers encoder/decoder is unrolled into a flat list of steps, cut at every GroupNorm. Each
stage between two GroupNorms runs tile after tile; what a tile carries (its activation and the
pending residual inputs) is parked on a storage device (the CPU when the VAE runs on CUDA), and
the statistics the next GroupNorm needs are accumulated over the tile *cores* only, which tile
the image exactly once. Device memory is set by the tile; host memory holds every tile's state
(about two full-resolution feature maps at the widest stage).

The result equals the untiled VAE up to float rounding when the halo covers the receptive field
and the net has no attention; the mid-block attention still sees one tile at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from sr4.refiner.tiling import GroupNormStats, Span, VAETileConfig, crop_core, vae_tile_grid

# One step maps (activation, residual stack) -> activation; `zoom` is its change of resolution.


@dataclass(frozen=True)
class Step:
    fn: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor] | None = None
    norm: nn.GroupNorm | None = None  # a statistics barrier: every tile must reach it first
    zoom: float = 1.0


def _run(module: Callable[[torch.Tensor], torch.Tensor], zoom: float = 1.0) -> Step:
    return Step(fn=lambda x, stack: module(x), zoom=zoom)


def _push() -> Step:
    def fn(x: torch.Tensor, stack: list[torch.Tensor]) -> torch.Tensor:
        stack.append(x)
        return x
    return Step(fn=fn)


def _resnet_steps(block: Any) -> list[Step]:
    name = type(block).__name__
    if (name != "ResnetBlock2D" or block.upsample is not None or block.downsample is not None
            or block.time_emb_proj is not None):
        raise ValueError(f"exact VAE tile statistics cannot unroll {name} with resampling or a time embedding")

    def residual(x: torch.Tensor, stack: list[torch.Tensor]) -> torch.Tensor:
        skip = stack.pop()
        if block.conv_shortcut is not None:
            skip = block.conv_shortcut(skip)
        return (skip + x) / block.output_scale_factor

    return [
        _push(),
        Step(norm=block.norm1),
        _run(lambda x: block.conv1(block.nonlinearity(block.norm1(x)))),
        Step(norm=block.norm2),
        _run(lambda x: block.conv2(block.dropout(block.nonlinearity(block.norm2(x))))),
        Step(fn=residual),
    ]


def _mid_steps(mid: Any) -> list[Step]:
    steps = _resnet_steps(mid.resnets[0])
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            if not isinstance(attn.group_norm, nn.GroupNorm):
                raise ValueError("exact VAE tile statistics need the mid-block attention to use a GroupNorm")
            steps += [Step(norm=attn.group_norm), _run(attn)]  # attention adds its own residual
        steps += _resnet_steps(resnet)
    return steps


def _head_steps(net: Any) -> list[Step]:
    if not isinstance(net.conv_norm_out, nn.GroupNorm):
        raise ValueError("exact VAE tile statistics need a GroupNorm before conv_out")
    return [Step(norm=net.conv_norm_out), _run(lambda x: net.conv_out(net.conv_act(net.conv_norm_out(x))))]


def _require(net: nn.Module, name: str) -> None:
    if type(net).__name__ != name:
        raise ValueError(f"exact VAE tile statistics unroll a diffusers {name}, not {type(net).__name__}; "
                         "use the fast statistics for other networks")


def encoder_steps(encoder: Any, quant_conv: nn.Module | None = None) -> list[Step]:
    """diffusers `Encoder` (+ the VAE's quant_conv) as a flat step list."""
    _require(encoder, "Encoder")
    steps = [_run(encoder.conv_in)]
    for block in encoder.down_blocks:
        for resnet in block.resnets:
            steps += _resnet_steps(resnet)
        for down in block.downsamplers or []:
            steps.append(_run(down, zoom=0.5))
    steps += _mid_steps(encoder.mid_block) + _head_steps(encoder)
    if quant_conv is not None:
        steps.append(_run(quant_conv))
    return steps


def decoder_steps(decoder: Any) -> list[Step]:
    """diffusers `Decoder` (no latent embeddings) as a flat step list."""
    _require(decoder, "Decoder")
    steps = [_run(decoder.conv_in)] + _mid_steps(decoder.mid_block)
    for block in decoder.up_blocks:
        for resnet in block.resnets:
            steps += _resnet_steps(resnet)
        for up in block.upsamplers or []:
            steps.append(_run(up, zoom=2.0))
    return steps + _head_steps(decoder)


@dataclass
class _Tile:
    rows: Span
    cols: Span
    x: torch.Tensor
    stack: list[torch.Tensor] = field(default_factory=list)


class _Moments:
    """Per-sample, per-group count/mean/M2, merged tile by tile (Chan's parallel formula, float64)."""

    def __init__(self, groups: int):
        self.groups = groups
        self.count = 0
        self.mean = torch.zeros(())
        self.m2 = torch.zeros(())

    def add(self, x: torch.Tensor) -> None:
        values = x.detach().double().reshape(x.shape[0], self.groups, -1)
        n = values.shape[-1]
        if n == 0:
            return
        mean = values.mean(-1)
        m2 = ((values - mean[..., None]) ** 2).sum(-1)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean[..., None].float(), (self.m2 / self.count)[..., None].float()


def run_vae_tiled_exact(steps: list[Step], modules: nn.Module, x: torch.Tensor, cfg: VAETileConfig,
                        storage: torch.device | None = None) -> torch.Tensor:
    """Run the unrolled VAE half over core+halo tiles with whole-image GroupNorm statistics.

    storage: where tile states wait between stages (default: CPU for CUDA inputs, else x's device).
    """
    rows, cols = vae_tile_grid(x.shape[-2], x.shape[-1], cfg)
    return run_vae_staged(steps, modules, x, rows, cols, cfg.scale, _CoreMoments, storage=storage)


class StatsCollector(Protocol):
    """Collects every tile's activation at a barrier, then gives the (mean, var) all tiles are normalised with."""

    def add(self, act: torch.Tensor, tile: _Tile, scale: float) -> None: ...

    def result(self) -> tuple[torch.Tensor, torch.Tensor]: ...


class _CoreMoments:
    """Exact statistics: every tile's core (the cores tile the image once) merged with Chan's formula."""

    def __init__(self, groups: int):
        self.moments = _Moments(groups)

    def add(self, act: torch.Tensor, tile: _Tile, scale: float) -> None:
        self.moments.add(crop_core(act, tile.rows, tile.cols, scale))

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.moments.result()


def run_vae_staged(steps: list[Step], modules: nn.Module, x: torch.Tensor, rows: list[Span], cols: list[Span],
                   out_scale: float, statistics: Callable[[int], StatsCollector], *, groups: int | None = None,
                   eps: float | None = None, storage: torch.device | None = None) -> torch.Tensor:
    """Run the unrolled VAE half stage by stage over the product grid rows x cols; at every GroupNorm
    barrier `statistics(groups)` collects each tile (`add(activation, tile, scale)`) and gives the
    (mean, var) every tile is then normalised with (`result()`). groups/eps override the layers' own."""
    device = x.device
    if storage is None:
        storage = torch.device("cpu") if device.type == "cuda" else device
    tiles = [_Tile(r, c, x[..., r.start:r.stop, c.start:c.stop].to(storage)) for r in rows for c in cols]
    stats = GroupNormStats(modules, groups=groups, eps=eps)
    index = {id(layer): i for i, layer in enumerate(stats.layers)}
    stats.mode = "apply"
    scale = 1.0  # resolution at the end of the current stage relative to x
    with stats.patched():
        for stage, barrier in _stages(steps):
            for step in stage:
                scale *= step.zoom
            collector = statistics(groups or barrier.num_groups) if barrier is not None else None
            for tile in tiles:
                act = tile.x.to(device)
                stack = [t.to(device) for t in tile.stack]
                for step in stage:
                    assert step.fn is not None  # only barriers have no function, and stages end at them
                    act = step.fn(act, stack)
                if collector is not None:
                    collector.add(act, tile, scale)
                tile.x = act.to(storage)
                tile.stack = [t.to(storage) for t in stack]
            if barrier is not None and collector is not None:
                stats.stats[index[id(barrier)]] = collector.result()
    out_rows: dict[int, list[torch.Tensor]] = {}
    for tile in tiles:
        core_out = crop_core(tile.x, tile.rows, tile.cols, out_scale).to(device)
        out_rows.setdefault(tile.rows.core_start, []).append(core_out)
    return torch.cat([torch.cat(row, dim=-1) for row in out_rows.values()], dim=-2)


def _stages(steps: list[Step]) -> list[tuple[list[Step], nn.GroupNorm | None]]:
    """Cut the step list at its statistics barriers: (steps before the barrier, the barrier's GroupNorm)."""
    stages: list[tuple[list[Step], nn.GroupNorm | None]] = []
    current: list[Step] = []
    for step in steps:
        if step.norm is not None:
            stages.append((current, step.norm))
            current = []
        else:
            current.append(step)
    stages.append((current, None))
    return stages
