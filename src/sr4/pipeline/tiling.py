"""Tiled inference: any image size in memory bounded by the tile size.

The LR image is cut into overlapping tiles on a regular grid; each tile is upscaled alone and
written into the output with a separable weight that ramps down linearly inside the overlap
next to interior tile edges (edges on the image border keep full weight). Because the weights
are separable and the tiles form a product grid, the total weight at every output pixel is the
outer product of two 1-D sums, so normalising needs no 2-D weight map: the only full-size
buffer is the output itself (kept on the CPU, so device memory depends on the tile only).

Tiles smaller than the network's `min_size` (small images, 1x1 included) are padded by
reflection (replication beyond what the tile can reflect) and cropped back.

`tile="auto"` runs one pass whenever the whole image fits in free memory (psutil or /proc/meminfo on
CPU, `torch.cuda.mem_get_info` on CUDA), as the official code does, else picks a power-of-two tile
from it; any out-of-memory error (CPU or CUDA) halves the tile and restarts the image with the
generator rewound, so the retry draws the same noise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sr4.models.descriptor import ModelDescriptor, SizeRequirements
from sr4.models.loading import describe_module
from sr4.utils.progress import ProgressFn

log = logging.getLogger(__name__)

TileForward = Callable[[torch.Tensor], torch.Tensor]

#: smallest tile the out-of-memory fallback goes down to (before min_size is applied).
MIN_TILE = 16


@dataclass(frozen=True)
class TileOptions:
    """tile: LR tile side in pixels, None for one pass over the whole image, or "auto".
    overlap: LR pixels shared by neighbouring tiles (blended)."""

    tile: int | str | None = "auto"
    overlap: int = 16

    def __post_init__(self) -> None:
        if self.tile is not None and self.tile != "auto" and (not isinstance(self.tile, int) or self.tile < 1):
            raise ValueError(f"tile must be a positive int, None or 'auto', got {self.tile!r}")
        if self.overlap < 0:
            raise ValueError(f"tile overlap must be >= 0, got {self.overlap}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` shared pixels.

    The tiles are spread evenly; the first starts at 0 and the last ends at `length`.
    """
    if length <= tile:
        return [0]
    overlap = min(overlap, tile - 1)
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_spans(length: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of the tiles along an axis: `tile_starts`, with every start a multiple of `align` (a model's
    `multiple_of`: a pixel-unshuffle input, a window grid), so each tile sees the image on the same grid as one pass
    does. An aligned start moves back by less than `align`, so the spans are planned with that much more overlap;
    the last span runs to the end (up to `align` - 1 pixels longer than `tile`)."""
    if align <= 1 or length <= tile:
        return [(s, min(s + tile, length)) for s in tile_starts(length, tile, overlap)]
    starts = [s - s % align for s in tile_starts(length, tile, overlap + align - 1)]
    spans = [(s, min(s + tile, length)) for s in starts]
    spans[-1] = (starts[-1], length)
    return spans


def ramp_weights(start: int, stop: int, length: int, ramp: int) -> torch.Tensor:
    """1-D blending weight of the output span [start, stop) of an axis of `length` output pixels.

    Next to an edge interior to the image: zero over the first quarter of `ramp` pixels (where a
    tile's missing context corrupts it most), then a linear rise to 1 at `ramp`. Neighbouring
    tiles overlap by at least `ramp`, so every output pixel keeps a positive total weight.
    """
    pos = torch.arange(start, stop, dtype=torch.float32)
    w = torch.ones(stop - start)
    if ramp > 0:
        dead = ramp // 4
        if start > 0:
            w = torch.minimum(w, ((pos - start + 0.5 - dead) / (ramp - dead)).clamp(min=0))
        if stop < length:
            w = torch.minimum(w, ((stop - pos - 0.5 - dead) / (ramp - dead)).clamp(min=0))
    return w


def pad_forward(forward: TileForward, x: torch.Tensor, scale: int, min_size: int, multiple_of: int = 1
                ) -> torch.Tensor:
    """Run `forward` on x (1,C,h,w), padding h/w up to `min_size` and a multiple of `multiple_of` (the model's
    size requirements) and cropping the result back."""
    h, w = x.shape[-2:]
    need_h, need_w = SizeRequirements(min_size, multiple_of).padded(h, w)
    ph, pw = need_h - h, need_w - w
    if ph == 0 and pw == 0:
        return forward(x)
    # Reflection keeps local statistics; it reaches side - 1 pixels, the rest is replicated (spandrel's rule too,
    # so a model run through spandrel sees the same padded image as spandrel's own call gives it).
    rh, rw = min(ph, h - 1), min(pw, w - 1)
    padded = F.pad(x, (0, rw, 0, rh), mode="reflect") if rh or rw else x
    if ph > rh or pw > rw:
        padded = F.pad(padded, (0, pw - rw, 0, ph - rh), mode="replicate")
    return forward(padded)[..., : h * scale, : w * scale]


def tiled_upscale(forward: TileForward, x: torch.Tensor, *, scale: int, tile: int | None, overlap: int = 16,
                  min_size: int = 1, multiple_of: int = 1, progress: ProgressFn | None = None) -> torch.Tensor:
    """Upscale x (1,C,H,W) tile by tile; returns (1,C,sH,sW) float32 on x's device.

    `forward` maps a (1,C,h,w) tile to (1,C,s*h,s*w); it is called tile after tile in raster order.
    tile=None runs the whole image in one call (still padded to min_size).
    """
    _, c, h, w = x.shape
    if tile is None or (h <= tile and w <= tile):
        if progress:
            progress(0, 1)
        out = pad_forward(forward, x, scale, min_size, multiple_of).float()
        if progress:
            progress(1, 1)
        return out.to(x.device)
    tile = max(int(tile), min_size)
    overlap = max(0, min(int(overlap), tile // 2))
    ys, xs = tile_spans(h, tile, overlap, multiple_of), tile_spans(w, tile, overlap, multiple_of)
    out = torch.zeros(1, c, h * scale, w * scale, dtype=torch.float32, device=x.device)
    wy_sum = torch.zeros(h * scale)
    wx_sum = torch.zeros(w * scale)
    ramp = overlap * scale
    total, done = len(ys) * len(xs), 0
    if progress:
        progress(0, total)
    for iy, (y0, y1) in enumerate(ys):
        oy0, oy1 = y0 * scale, y1 * scale
        wy = ramp_weights(oy0, oy1, h * scale, ramp)
        wy_sum[oy0:oy1] += wy
        for x0, x1 in xs:
            ox0, ox1 = x0 * scale, x1 * scale
            wx = ramp_weights(ox0, ox1, w * scale, ramp)
            if iy == 0:
                wx_sum[ox0:ox1] += wx
            piece = pad_forward(forward, x[:, :, y0:y1, x0:x1], scale, min_size, multiple_of)
            piece = piece.float().to(out.device)
            weight = (wy.view(-1, 1) * wx.view(1, -1)).to(out.device)
            out[:, :, oy0:oy1, ox0:ox1].addcmul_(piece, weight)
            del piece
            done += 1
            if progress:
                progress(done, total)
    out.div_(wy_sum.to(out.device).view(1, 1, -1, 1))
    out.div_(wx_sum.to(out.device).view(1, 1, 1, -1))
    return out


# ---------------------------------------------------------------------- memory


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA and CPU allocation failures (torch raises plain RuntimeError on CPU)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "failed to allocate" in text)


def free_memory_bytes(device: torch.device) -> int:
    """Memory available for a new allocation on `device` (bytes)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # Blocks cached by torch's allocator but unused are free for us too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # unknown platform: assume a modest 4 GiB


def bytes_per_pixel(model: ModelDescriptor | nn.Module, dtype: torch.dtype, scale: int) -> float:
    """Rough activation memory per LR pixel of one forward pass.

    The model's descriptor may state it (`memory_per_pixel`); otherwise estimate from its widest
    layer (activations of a few dozen feature maps of that width live at once, more in
    attention/state-space blocks) plus the upscaled output.
    """
    descriptor = model if isinstance(model, ModelDescriptor) else describe_module(model)
    if descriptor.memory_per_pixel is not None:
        return descriptor.memory_per_pixel
    width = 3
    for m in descriptor.model.modules():
        if isinstance(m, nn.Conv2d):
            width = max(width, m.out_channels)
        elif isinstance(m, nn.Linear):
            width = max(width, m.out_features)
    elt = torch.tensor([], dtype=dtype).element_size()
    return width * elt * 64 + scale * scale * 3 * 4 * 4


#: Share of the free memory of the CPU that one pass over a whole image may take when the model states its memory
#: per pixel: the stated figures are 2-3x the measured peaks (MambaIRv2-B states 65 KB per LR pixel, peaks at 24),
#: so the pass really takes at most about a third of what is free. Tiles change a model's result (MambaIRv2 routes
#: tokens per tile), and the official code runs U in one pass, so sr4 does too whenever that is safe.
CPU_ONE_PASS_SHARE = 0.75


def memory_budget(device: torch.device, free_bytes: int | None = None) -> float:
    """Bytes one tile's forward may use: half the free memory on CUDA, a quarter on the CPU (shared with
    everything else on the machine)."""
    free = free_memory_bytes(device) if free_bytes is None else free_bytes
    return max(free, 0) * (0.5 if device.type == "cuda" else 0.25)


def fits_untiled(model: ModelDescriptor | nn.Module, device: torch.device, dtype: torch.dtype, scale: int, height: int,
                 width: int, free_bytes: int | None = None) -> bool:
    """Whether one pass over a height x width image fits: within the tile budget, or on the CPU within
    `CPU_ONE_PASS_SHARE` of free memory when the model states its memory per pixel (an estimate from the layers
    gets no such credit). On CUDA an out-of-memory error is caught and the pass retried in tiles."""
    free = free_memory_bytes(device) if free_bytes is None else free_bytes
    need = height * width * bytes_per_pixel(model, dtype, scale)
    if need <= memory_budget(device, free):
        return True
    descriptor = model if isinstance(model, ModelDescriptor) else describe_module(model)
    stated = descriptor.memory_per_pixel is not None
    return device.type == "cpu" and stated and need <= CPU_ONE_PASS_SHARE * max(free, 0)


def auto_tile_size(model: ModelDescriptor | nn.Module, device: torch.device, dtype: torch.dtype, scale: int,
                   min_size: int = 1, free_bytes: int | None = None) -> int:
    """Largest power-of-two tile side (32 to 4096) whose forward fits in free memory.

    Powers of two keep the choice coarse: the result of a network with random draws depends on
    the tiling, so small changes in free memory between runs should not change the tile.
    (Pass an explicit tile for results that are identical on every machine.)
    """
    side = int(math.sqrt(memory_budget(device, free_bytes) / bytes_per_pixel(model, dtype, scale)))
    side = 1 << max(5, min(12, side.bit_length() - 1)) if side > 0 else 32
    return max(side, min_size)


def upscale_with_fallback(forward: TileForward, x: torch.Tensor, *, scale: int, tile: int | None, overlap: int,
                          min_size: int, multiple_of: int = 1, generator: torch.Generator | None = None,
                          progress: ProgressFn | None = None, device: torch.device | None = None) -> torch.Tensor:
    """`tiled_upscale`, halving the tile after an out-of-memory error until it works or reaches MIN_TILE."""
    state = generator.get_state() if generator is not None else None
    while True:
        try:
            return tiled_upscale(forward, x, scale=scale, tile=tile, overlap=overlap, min_size=min_size,
                                 multiple_of=multiple_of, progress=progress)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            current = tile if tile is not None else max(x.shape[-2:])
            smallest = max(MIN_TILE, min_size)
            if current <= smallest:
                raise MemoryError(f"out of memory even with {current}px tiles ({exc})") from exc
            tile = max(smallest, current // 2)
            log.warning("out of memory; retrying with %dpx tiles", tile)
            del exc
            if device is not None and device.type == "cuda":
                torch.cuda.empty_cache()
            if generator is not None and state is not None:
                generator.set_state(state)  # the retry must draw the same noise as a first try would
