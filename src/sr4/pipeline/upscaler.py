"""`sr4.Upscaler`: stage U alone (any upsampler module or checkpoint), tiled, on any image type."""

from __future__ import annotations

import copy
import threading
import warnings

import torch

from sr4.models.bicubic import BICUBIC
from sr4.models.descriptor import ModelDescriptor, ModelTiling
from sr4.models.loading import ModelSpec, load_model
from sr4.pipeline.base import ImageProcessor, add_note
from sr4.pipeline.tiling import TileForward, TileOptions, auto_tile_size, fits_untiled, upscale_with_fallback
from sr4.utils.device import resolve_device, resolve_dtype
from sr4.utils.progress import ProgressFn
from sr4.utils.rng import advance_generator


class Upscaler(ImageProcessor):
    """Upscale images with an upsampler network, tile by tile.

    model: None (sr4's bundled default upsampler, `sr4.models.bundled.DEFAULT_MODEL`: a small
        MambaIRv2-Light x4 shipped in the package, checked by sha256), "bicubic" (plain bicubic
        x4, no network), a checkpoint path (any registered architecture, detected from the keys:
        `sr4.models.load_model`), an `nn.Module` (of a registered architecture, or following the upsampler
        contract: `scale`, optional `min_size`, `forward(x, generator=None)`) or a `ModelDescriptor`; a given
        module is moved to `device`/`dtype` and set to eval. Everything below is read from its descriptor.
    tile: LR tile side in pixels, None for no tiling, or "auto" (one pass whenever the whole image fits
        in free memory, as the official code runs; else a power of two from free memory). Networks with
        random draws (MambaIRv2) give slightly different results for different tilings. After a tiled
        pass the generator is left where one pass would have left it (for networks that state their
        draws, `noise_draws(h, w)`), so whatever draws from it next (the refiner's latent sample) does not
        depend on the tiling.
    tile_overlap: LR pixels shared by neighbouring tiles.
    device: "auto" (CUDA when present), "cpu", "cuda:N" or a torch.device.
    dtype: "auto" (fp16 on CUDA when the model supports it, fp32 otherwise), "fp32", "fp16", "bf16" or a
        torch.dtype; a half type the model does not support is an error.
    seed: default seed of the per-call generator (MambaIRv2 draws routing noise at inference).
    alpha: "bicubic" (default) or "network": how the alpha channel of LA/RGBA images is upscaled.

    In float16, a tile whose output overflows (NaN or inf) is recomputed in float32 with the same
    random draws, and the result's notes say so; a float32 result that is still not finite is an
    error naming the model (`sr4.pipeline.base.NonFiniteOutputError`).

    Calls are stateless: one Upscaler may be used from several threads at once.
    """

    def __init__(self, model: ModelSpec = None, *, tile: int | str | None = "auto", tile_overlap: int = 16,
                 device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto", seed: int = 0,
                 alpha: str = "bicubic"):
        self.options = TileOptions(tile=tile, overlap=tile_overlap)
        self._device = resolve_device(device)
        self.seed = int(seed)
        if alpha not in ("bicubic", "network"):
            raise ValueError(f"alpha must be 'bicubic' or 'network', got {alpha!r}")
        self.alpha_upsampler = alpha
        descriptor = load_model(model)
        self.dtype = resolve_dtype(dtype, self._device, descriptor.supported_dtypes)
        self.is_default = model is None
        self.model_name = descriptor.label
        # In float16 keep the float32 weights (host memory) for recomputing tiles that overflow.
        self._fp32: ModelDescriptor | None = None
        if self.dtype == torch.float16:
            fp32_copy = copy.deepcopy(descriptor.model).float().cpu().eval().requires_grad_(False)
            self._fp32 = descriptor.with_model(fp32_copy)
        self._fp32_lock = threading.Lock()
        descriptor.to(device=self._device, dtype=self.dtype).model.eval().requires_grad_(False)
        self.descriptor = descriptor
        self.model = descriptor.model
        self.scale = descriptor.scale
        self.min_size = descriptor.size_requirements.minimum
        self._fp32_on_device = False

    @property
    def is_bicubic(self) -> bool:
        """Plain bicubic interpolation (`model="bicubic"`), no network."""
        return self.descriptor.arch.id == BICUBIC

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
        if self.descriptor.tiling is ModelTiling.INTERNAL:
            return None
        if tile == "auto":
            if fits_untiled(self.descriptor, self._device, self.dtype, self.scale, height, width):
                return None
            tile = auto_tile_size(self.descriptor, self._device, self.dtype, self.scale, self.min_size)
            if height <= tile and width <= tile:
                return None
        return None if tile is None else int(tile)

    def _forward(self, generator: torch.Generator, sizes: list[tuple[int, int]]) -> TileForward:
        model = self.descriptor

        def run(x: torch.Tensor) -> torch.Tensor:
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
            if self.dtype != torch.float16:
                return model(x.to(device=self._device, dtype=self.dtype), generator)
            state = generator.get_state()
            y = model(x.to(device=self._device, dtype=self.dtype), generator)
            if bool(torch.isfinite(y).all()):
                return y
            generator.set_state(state)  # the same random draws as the float16 attempt
            add_note(f"{self.model_name} overflowed in float16 on some tiles; they were recomputed in float32")
            return self._float32_model()(x.to(device=self._device, dtype=torch.float32), generator)

        return run

    def _float32_model(self) -> ModelDescriptor:
        with self._fp32_lock:  # moved to the device on the first overflow only
            assert self._fp32 is not None
            if not self._fp32_on_device:
                self._fp32.to(self._device)
                self._fp32_on_device = True
            return self._fp32

    def upscale_rgb(self, x: torch.Tensor, generator: torch.Generator, progress: ProgressFn | None = None
                    ) -> torch.Tensor:
        h, w = x.shape[-2:]
        start = generator.get_state() if self.descriptor.stochastic else None
        sizes: list[tuple[int, int]] = []
        # The output is assembled on x's device (the CPU for files and arrays), so device memory
        # depends on the tile size only.
        out = upscale_with_fallback(self._forward(generator, sizes), x, scale=self.scale, tile=self.tile_size(h, w),
                                    overlap=self.options.overlap, min_size=self.min_size,
                                    multiple_of=self.descriptor.size_requirements.multiple_of, generator=generator,
                                    progress=progress, device=self._device)
        one_pass = len(sizes) == 1 and sizes[0][0] >= h and sizes[0][1] >= w
        if start is not None and not one_pass:
            self._as_one_pass(generator, start, h, w)
        return out

    def _as_one_pass(self, generator: torch.Generator, start: torch.Tensor, h: int, w: int) -> None:
        """Leave `generator` where one pass over an h x w image would: rewind, then draw what that pass draws."""
        counts = self.descriptor.draws(max(h, self.min_size), max(w, self.min_size))
        if counts is None:
            # Python shows a warning once per place by default
            warnings.warn(f"{type(self.model).__name__} does not state its random draws (noise_draws); after tiles "
                          "the generator is not where one pass would leave it, so later draws depend on the tiling",
                          RuntimeWarning, stacklevel=3)
            return
        # noise is drawn where the generator lives; in fp32 when that is not the model's device
        dtype = self.dtype if generator.device == self._device else torch.float32
        generator.set_state(start)
        if not advance_generator(generator, counts, dtype):
            warnings.warn(f"cannot replay random draws on {generator.device.type}; later draws depend on the tiling",
                          RuntimeWarning, stacklevel=3)

