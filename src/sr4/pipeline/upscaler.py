"""`sr4.Upscaler`: stage U alone (any upsampler module or checkpoint), tiled, on any image type."""

from __future__ import annotations

import copy
import inspect
import os
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from sr4.pipeline.base import ImageProcessor, add_note
from sr4.pipeline.tiling import TileOptions, auto_tile_size, fits_untiled, upscale_with_fallback
from sr4.utils.device import resolve_device, resolve_dtype
from sr4.utils.progress import ProgressFn
from sr4.utils.rng import advance_generator

#: `model` value that asks for plain bicubic x4 (no network) instead of the bundled default.
BICUBIC = "bicubic"
BICUBIC_NOTICE = ("bicubic: plain bicubic x4 interpolation, no network; leave the model out for sr4's "
                  "bundled default upsampler or pass a MambaIRv2 checkpoint (model=... / --model FILE)")


class Upscaler(ImageProcessor):
    """Upscale images with an upsampler network, tile by tile.

    model: None (sr4's bundled default upsampler, `sr4.networks.default.DEFAULT_MODEL`: a small
        MambaIRv2-Light x4 shipped in the package, checked by sha256), "bicubic" (plain bicubic
        x4, no network), a checkpoint path (read by `sr4.networks.loading.load_upsampler`,
        architecture detected from the keys) or an `nn.Module` following the upsampler contract
        (`scale`, optional `min_size`, `forward(x, generator=None)`); a given module is moved to
        `device`/`dtype` and set to eval.
    tile: LR tile side in pixels, None for no tiling, or "auto" (one pass whenever the whole image fits
        in free memory, as the official code runs; else a power of two from free memory). Networks with
        random draws (MambaIRv2) give slightly different results for different tilings. After a tiled
        pass the generator is left where one pass would have left it (for networks that state their
        draws, `noise_draws(h, w)`), so whatever draws from it next (the refiner's latent sample) does not
        depend on the tiling.
    tile_overlap: LR pixels shared by neighbouring tiles.
    device: "auto" (CUDA when present), "cpu", "cuda:N" or a torch.device.
    dtype: "auto" (fp16 on CUDA, fp32 on CPU), "fp32", "fp16", "bf16" or a torch.dtype.
    seed: default seed of the per-call generator (MambaIRv2 draws routing noise at inference).
    alpha: "bicubic" (default) or "network": how the alpha channel of LA/RGBA images is upscaled.

    In float16, a tile whose output overflows (NaN or inf) is recomputed in float32 with the same
    random draws, and the result's notes say so; a float32 result that is still not finite is an
    error naming the model (`sr4.pipeline.base.NonFiniteOutputError`).

    Calls are stateless: one Upscaler may be used from several threads at once.
    """

    def __init__(self, model: None | str | os.PathLike | nn.Module = None, *, tile: int | str | None = "auto",
                 tile_overlap: int = 16, device: str | torch.device | None = "auto",
                 dtype: str | torch.dtype | None = "auto", seed: int = 0, alpha: str = "bicubic"):
        self.options = TileOptions(tile=tile, overlap=tile_overlap)
        self._device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self._device)
        self.seed = int(seed)
        if alpha not in ("bicubic", "network"):
            raise ValueError(f"alpha must be 'bicubic' or 'network', got {alpha!r}")
        self.alpha_upsampler = alpha
        self.is_bicubic = isinstance(model, str) and model == BICUBIC
        self.is_default = model is None
        if model is None:
            from sr4.networks.default import DEFAULT_MODEL, load_default_upsampler

            module: nn.Module = load_default_upsampler()
            self.model_name = f"sr4's bundled model {DEFAULT_MODEL.name}"
        elif self.is_bicubic:
            from sr4.networks.bicubic import BicubicUpsampler

            module = BicubicUpsampler(4)
            self.model_name = "bicubic"
        elif isinstance(model, (str, os.PathLike)):
            from sr4.networks.loading import load_upsampler

            module = load_upsampler(Path(model))
            self.model_name = f"the model {model}"
        elif isinstance(model, nn.Module):
            module = model
            self.model_name = f"the model {type(model).__name__}"
        else:
            raise TypeError(f"model must be None (bundled default), 'bicubic', a checkpoint path or an nn.Module, "
                            f"got {type(model).__name__}")
        if not isinstance(getattr(module, "scale", None), int) or module.scale < 1:
            raise ValueError(f"upsampler {type(module).__name__} has no positive integer `scale` attribute")
        # In float16 keep the float32 weights (host memory) for recomputing tiles that overflow.
        self._fp32_copy: nn.Module | None = (copy.deepcopy(module).float().cpu().eval().requires_grad_(False)
                                             if self.dtype == torch.float16 else None)
        self._fp32_lock = threading.Lock()
        self.model = module.to(device=self._device, dtype=self.dtype).eval().requires_grad_(False)
        self.scale = int(module.scale)
        self.min_size = int(getattr(module, "min_size", 1))
        self._takes_generator = _accepts_generator(module)
        self._fp32_on_device = False

    @property
    def device(self) -> torch.device:
        return self._device

    def __repr__(self) -> str:
        return (f"Upscaler(model={type(self.model).__name__}, scale={self.scale}, tile={self.options.tile!r}, "
                f"tile_overlap={self.options.overlap}, device={str(self._device)!r}, dtype={self.dtype}, "
                f"seed={self.seed})")

    def tile_size(self, height: int, width: int) -> int | None:
        """The LR tile side a call on an image of this size starts with (None: one pass)."""
        tile = self.options.tile
        if tile == "auto":
            if fits_untiled(self.model, self._device, self.dtype, self.scale, height, width):
                return None
            tile = auto_tile_size(self.model, self._device, self.dtype, self.scale, self.min_size)
            if height <= tile and width <= tile:
                return None
        return tile

    def _forward(self, generator: torch.Generator, sizes: list[tuple[int, int]]):
        def call(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return model(x, generator=generator) if self._takes_generator else model(x)

        def run(x: torch.Tensor) -> torch.Tensor:
            sizes.append(tuple(x.shape[-2:]))
            if self.dtype != torch.float16:
                return call(self.model, x.to(device=self._device, dtype=self.dtype))
            state = generator.get_state()
            y = call(self.model, x.to(device=self._device, dtype=self.dtype))
            if bool(torch.isfinite(y).all()):
                return y
            generator.set_state(state)  # the same random draws as the float16 attempt
            add_note(f"{self.model_name} overflowed in float16 on some tiles; they were recomputed in float32")
            return call(self._float32_model(), x.to(device=self._device, dtype=torch.float32))

        return run

    def _float32_model(self) -> nn.Module:
        with self._fp32_lock:  # moved to the device on the first overflow only
            if not self._fp32_on_device:
                self._fp32_copy = self._fp32_copy.to(self._device)
                self._fp32_on_device = True
            return self._fp32_copy

    def upscale_rgb(self, x: torch.Tensor, generator: torch.Generator, progress: ProgressFn | None = None
                    ) -> torch.Tensor:
        h, w = x.shape[-2:]
        start = generator.get_state() if self._takes_generator else None
        sizes: list[tuple[int, int]] = []
        # The output is assembled on x's device (the CPU for files and arrays), so device memory
        # depends on the tile size only.
        out = upscale_with_fallback(self._forward(generator, sizes), x, scale=self.scale, tile=self.tile_size(h, w),
                                    overlap=self.options.overlap, min_size=self.min_size, generator=generator,
                                    progress=progress, device=self._device)
        one_pass = len(sizes) == 1 and sizes[0][0] >= h and sizes[0][1] >= w
        if start is not None and not one_pass:
            self._as_one_pass(generator, start, h, w)
        return out

    def _as_one_pass(self, generator: torch.Generator, start: torch.Tensor, h: int, w: int) -> None:
        """Leave `generator` where one pass over an h x w image would: rewind, then draw what that pass draws."""
        draws = getattr(self.model, "noise_draws", None)
        if draws is None:
            # Python shows a warning once per place by default
            warnings.warn(f"{type(self.model).__name__} does not state its random draws (noise_draws); after tiles "
                          "the generator is not where one pass would leave it, so later draws depend on the tiling",
                          RuntimeWarning, stacklevel=3)
            return
        counts = draws(max(h, self.min_size), max(w, self.min_size))
        # noise is drawn where the generator lives; in fp32 when that is not the model's device
        dtype = self.dtype if generator.device == self._device else torch.float32
        generator.set_state(start)
        if not advance_generator(generator, counts, dtype):
            warnings.warn(f"cannot replay random draws on {generator.device.type}; later draws depend on the tiling",
                          RuntimeWarning, stacklevel=3)


def _accepts_generator(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
