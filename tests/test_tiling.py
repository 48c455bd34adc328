"""Tiled inference: blending, padding for small inputs, automatic tile size, out-of-memory fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sr4.pipeline.tiling import (
    TileOptions,
    auto_tile_size,
    free_memory_bytes,
    pad_forward,
    ramp_weights,
    tile_starts,
    tiled_upscale,
    upscale_with_fallback,
)


class ConvX4(nn.Module):
    """Three 3x3 convs (receptive-field radius 3 LR pixels) + pixel shuffle x4."""

    scale = 4
    min_size = 1

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 48, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.2

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return F.pixel_shuffle(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))), 4)


def _border_distance(length: int, starts: list[int], tile: int) -> torch.Tensor:
    """Per LR position: distance to the nearest interior tile edge."""
    pos = torch.arange(length)
    edges = [s for s in starts if s > 0] + [s + tile for s in starts if s + tile < length]
    if not edges:
        return torch.full((length,), length)
    return torch.stack([(pos - e).abs() for e in edges]).min(0).values


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (191, 100, 10), (33, 32, 4), (1000, 64, 0), (7, 8, 2)])
def test_tile_starts_cover_and_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert min(starts[-1] + tile, length) == length
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap  # neighbours share at least `overlap` pixels


def test_ramp_weights_positive_total() -> None:
    length, tile, overlap, scale = 150, 40, 8, 4
    starts = tile_starts(length, tile, overlap)
    total = torch.zeros(length * scale)
    for s in starts:
        a, b = s * scale, (s + tile) * scale
        total[a:b] += ramp_weights(a, b, length * scale, overlap * scale)
    assert total.min() > 0.2
    # Image borders are never ramped down.
    w = ramp_weights(0, tile * scale, length * scale, overlap * scale)
    assert w[0] == 1 and w[-1] == 0


def test_tiled_equals_untiled_when_dead_zone_covers_receptive_field() -> None:
    torch.manual_seed(1)
    net = ConvX4().eval()
    x = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        ref = net(x)
        # overlap 12 -> 3 LR px of zero weight at interior edges = the receptive-field radius.
        out = tiled_upscale(net, x, scale=4, tile=32, overlap=12)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-5


def test_tiled_differs_only_near_tile_borders() -> None:
    torch.manual_seed(2)
    net = ConvX4().eval()
    x = torch.rand(1, 3, 80, 100)
    tile, overlap = 40, 4
    with torch.no_grad():
        ref = net(x)
        out = tiled_upscale(net, x, scale=4, tile=tile, overlap=overlap)
    diff = (out - ref).abs()[0].amax(0)
    assert diff.max() > 1e-4  # with this small overlap the seams are not exact...
    assert diff.max() < 0.35 * ref.abs().max()  # ...but stay small (stated bound: 35% of the signal peak)
    # ...and only within overlap + receptive field (3 LR px) of an interior tile edge.
    dy = _border_distance(80, tile_starts(80, tile, overlap), tile).repeat_interleave(4)
    dx = _border_distance(100, tile_starts(100, tile, overlap), tile).repeat_interleave(4)
    far = (dy.view(-1, 1) > overlap + 3) & (dx.view(1, -1) > overlap + 3)
    assert far.float().mean() > 0.15  # the exact region is not empty
    assert diff[far].max() < 1e-5


class NeedsMin(nn.Module):
    """Nearest x4 that refuses inputs smaller than 8 px, like MambaIRv2's window padding."""

    scale = 4
    min_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        assert min(x.shape[-2:]) >= self.min_size, x.shape
        self.seen.append(tuple(x.shape[-2:]))
        return F.interpolate(x, scale_factor=4, mode="nearest")


@pytest.mark.parametrize("h,w", [(1, 1), (7, 7), (1, 20), (5, 9)])
def test_small_inputs_are_padded_and_cropped(h: int, w: int) -> None:
    net = NeedsMin()
    x = torch.rand(1, 3, h, w)
    out = pad_forward(net, x, 4, net.min_size)
    assert out.shape == (1, 3, 4 * h, 4 * w)
    # The network is pointwise, so the crop must equal the unpadded nearest upsampling exactly.
    assert torch.equal(out, F.interpolate(x, scale_factor=4, mode="nearest"))
    assert min(net.seen[0]) == 8


def test_tiles_smaller_than_min_size_are_padded() -> None:
    net = NeedsMin()
    x = torch.rand(1, 3, 30, 5)
    out = tiled_upscale(net, x, scale=4, tile=4, overlap=1, min_size=net.min_size)
    assert torch.allclose(out, F.interpolate(x, scale_factor=4, mode="nearest"), atol=1e-6)


class OOMAbove(nn.Module):
    """Raises an out-of-memory error for tiles larger than `limit` pixels per side."""

    scale = 4
    min_size = 1

    def __init__(self, limit: int, cpu_style: bool = False) -> None:
        super().__init__()
        self.limit, self.cpu_style = limit, cpu_style
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        side = max(x.shape[-2:])
        self.sizes.append(side)
        if side > self.limit:
            if self.cpu_style:
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        noise = torch.rand(1, generator=generator) if generator is not None else 0
        return F.interpolate(x, scale_factor=4, mode="nearest") + 0 * noise


@pytest.mark.parametrize("cpu_style", [False, True])
def test_out_of_memory_halves_the_tile(cpu_style: bool) -> None:
    net = OOMAbove(limit=20, cpu_style=cpu_style)
    x = torch.rand(1, 3, 50, 60)
    gen = torch.Generator().manual_seed(0)
    out = upscale_with_fallback(lambda t: net(t, generator=gen), x, scale=4, tile=64, overlap=4, min_size=1,
                                generator=gen)
    assert torch.allclose(out, F.interpolate(x, scale_factor=4, mode="nearest"), atol=1e-6)
    assert net.sizes[0] == 60 and max(net.sizes[-4:]) <= 16  # 64 -> 32 -> 16


def test_out_of_memory_at_smallest_tile_is_reported() -> None:
    net = OOMAbove(limit=0)
    with pytest.raises(MemoryError, match="out of memory even with 16px tiles"):
        upscale_with_fallback(net, torch.rand(1, 3, 40, 40), scale=4, tile=32, overlap=4, min_size=1)


def test_other_errors_are_not_retried() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        upscale_with_fallback(broken, torch.rand(1, 3, 40, 40), scale=4, tile=32, overlap=4, min_size=1)


def test_auto_tile_size_follows_free_memory() -> None:
    net = ConvX4()
    small = auto_tile_size(net, torch.device("cpu"), torch.float32, 4, free_bytes=256 << 20)
    large = auto_tile_size(net, torch.device("cpu"), torch.float32, 4, free_bytes=16 << 30)
    assert 32 <= small < large <= 4096
    assert small & (small - 1) == 0 and large & (large - 1) == 0  # powers of two
    # 64x the memory gives 8x the side.
    assert large == 8 * small
    # A little more or less memory does not change the choice.
    assert auto_tile_size(net, torch.device("cpu"), torch.float32, 4, free_bytes=int(1.1 * (256 << 20))) == small
    assert free_memory_bytes(torch.device("cpu")) > 0


def test_tile_options_validate() -> None:
    with pytest.raises(ValueError, match="tile must be"):
        TileOptions(tile=0)
    with pytest.raises(ValueError, match="overlap"):
        TileOptions(tile=32, overlap=-1)
    assert TileOptions(tile=None).tile is None


def test_progress_reports_every_tile() -> None:
    calls: list[tuple[int, int]] = []
    tiled_upscale(lambda t: F.interpolate(t, scale_factor=4), torch.rand(1, 3, 50, 50), scale=4, tile=20,
                  overlap=2, progress=lambda d, n: calls.append((d, n)))
    n = len(tile_starts(50, 20, 2)) ** 2
    assert calls[0] == (0, n) and calls[-1] == (n, n) and len(calls) == n + 1


def test_tiles_start_on_the_models_grid() -> None:
    """A model with `multiple_of` (pixel-unshuffle, windows) sees every tile on the grid of one pass: starts are
    multiples of it, spans cover the axis with at least the overlap asked for."""
    from sr4.pipeline.tiling import tile_spans

    for length, tile, overlap, align in [(72, 32, 16, 4), (61, 16, 8, 4), (45, 20, 4, 8), (30, 32, 8, 4)]:
        spans = tile_spans(length, tile, overlap, align)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(start % align == 0 for start, _ in spans)
        assert all(a[1] - b[0] >= min(overlap, tile) for a, b in zip(spans, spans[1:]))
        assert all(stop - start <= tile + align - 1 for start, stop in spans)


def test_a_pixel_unshuffle_model_tiled_equals_one_pass_where_context_allows() -> None:
    """Pixel-unshuffle by 2 then shuffle back: pointwise on the 2 px grid, so aligned tiles give one pass exactly."""
    net = nn.Sequential(nn.PixelUnshuffle(2), nn.PixelShuffle(2))
    x = torch.rand(1, 3, 29, 35)
    whole = tiled_upscale(net, x, scale=1, tile=None, multiple_of=2)
    tiled = tiled_upscale(net, x, scale=1, tile=9, overlap=3, multiple_of=2)
    assert torch.equal(whole, x) and torch.allclose(tiled, x, atol=1e-6)
