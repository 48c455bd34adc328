"""`ImageProcessor`: the image-type and image-mode rules shared by every sr4 pipeline.

A subclass only implements `upscale_rgb` (one RGB float image in, one RGB float image out) and
sets `scale`; this base turns that into a callable that accepts PIL images, numpy arrays and
torch tensors of any common mode and returns the same type:

* gray (L, HxW, HxWx1, (1,H,W)) is replicated to RGB, upscaled, and brought back to one channel
  with ITU-R 601 luma weights (Pillow's own RGB->L rule), so gray in gives gray out;
* alpha (LA, RGBA, P with transparency, 2- and 4-channel arrays) is upscaled separately with
  bicubic interpolation (clamped to [0, 1]) and re-attached: the network never sees alpha, and
  transparency edges stay smooth instead of picking up texture hallucinated for RGB;
* uint8 stays uint8, uint16 stays uint16 (16-bit PNG/TIFF files round-trip at 16 bits), float
  stays float (assumed in [0, 1]; outputs are clamped to [0, 1]);
* palette, CMYK, YCbCr, LAB and HSV images come back as RGB (or RGBA when they had transparency).

Every call builds its own `torch.Generator` seeded from `seed`, so concurrent calls on one
processor are independent and each result depends only on (image, seed).

A result holding NaN or infinite values is never returned: `NonFiniteOutputError` names the model
(an all-black "upscaled" image would otherwise pass for a result).
"""

from __future__ import annotations

import abc
import contextvars
import inspect
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F

from sr4.errors import NonFiniteOutputError
from sr4.image.convert import pixel_peak
from sr4.utils.progress import ProgressFn

if TYPE_CHECKING:
    from sr4.image.io import ImageData

ImageT = TypeVar("ImageT")

# ITU-R 601 luma, the weights Pillow uses for RGB -> L.
_LUMA = (0.299, 0.587, 0.114)

log = logging.getLogger("sr4")
# Notes of the `process_image_data` call running in this thread / context (None outside one).
_CALL_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("sr4_call_notes", default=None)


def add_note(text: str) -> None:
    """Tell the user something about the current image (e.g. a tile recomputed in float32): it goes
    to the `notes` of the `ImageData` that `process_image_data` returns, or to the log outside one."""
    notes = _CALL_NOTES.get()
    if notes is None:
        log.warning(text)
    elif text not in notes:
        notes.append(text)


class ImageProcessor(abc.ABC):
    """Base of `sr4.Upscaler` and `sr4.Pipeline`: subclasses set `scale` and implement `upscale_rgb`."""

    #: integer upscaling factor of `upscale_rgb`.
    scale: int = 4
    #: default seed of the per-call generator.
    seed: int = 0
    #: how alpha is upscaled: "bicubic" (default: smooth, cheap, no invented texture) or
    #: "network" (alpha replicated to RGB and sent through `upscale_rgb`, then averaged).
    alpha_upsampler: str = "bicubic"
    #: how errors name the model (a checkpoint path, a model folder, ...).
    model_name: str = "the model"

    @property
    def device(self) -> torch.device:
        """Device the per-call generator lives on (the one `upscale_rgb` draws its noise on)."""
        return torch.device("cpu")

    @abc.abstractmethod
    def upscale_rgb(self, x: torch.Tensor, generator: torch.Generator, progress: ProgressFn | None = None
                    ) -> torch.Tensor:  # `progress` may be left out of an implementation's signature
        """x: (1, 3, H, W) float32 in [0, 1] -> (1, 3, scale*H, scale*W) float.

        x stays where the caller's pixels are (the CPU for files, PIL images and numpy arrays; the
        tensor's device for tensors): the implementation moves what it needs to `self.device`, so a
        large output can be assembled off the accelerator. Any device is accepted for the result.
        Values outside [0, 1] are allowed in the result; the caller clamps. `progress(done, total)`
        may be called per tile.
        """

    # ------------------------------------------------------------------ public API

    def make_generator(self, seed: int | None = None) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(self.seed if seed is None else seed))
        return gen

    def __call__(self, image: ImageT, *, seed: int | None = None, outscale: float | None = None,
                 progress: ProgressFn | None = None) -> ImageT:
        """Upscale a PIL image, a numpy array (HxW, HxWxC; uint8/uint16/float) or a torch tensor
        ((C,H,W) or (B,C,H,W), float) and return the same type.

        outscale: final size relative to the input (e.g. 2.0 for x2 output from a x4 network);
        the network output is resized with antialiased bicubic. None keeps the network's scale.
        """
        from PIL import Image

        if isinstance(image, Image.Image):
            from sr4.image.io import from_pil, to_pil

            return cast(ImageT, to_pil(self.process_array(from_pil(image).pixels, seed=seed, outscale=outscale,
                                                          progress=progress)))
        if isinstance(image, np.ndarray):
            return cast(ImageT, self.process_array(image, seed=seed, outscale=outscale, progress=progress))
        if isinstance(image, torch.Tensor):
            return cast(ImageT, self._process_torch(image, seed=seed, outscale=outscale, progress=progress))
        raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")

    def process_array(self, array: np.ndarray, *, seed: int | None = None, outscale: float | None = None,
                      progress: ProgressFn | None = None) -> np.ndarray:
        """numpy HxW or HxWxC (C in 1..4), uint8/uint16/float -> same layout and dtype, upscaled."""
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 2, 3, 4)):
            raise ValueError(f"expected an HxW or HxWxC array with C in 1..4, got shape {array.shape}")
        dtype = array.dtype
        peak: float | None
        if dtype == np.bool_:
            array, peak = array.astype(np.uint8), 1.0
        else:
            peak = pixel_peak(dtype)
        planes = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        planes = planes.unsqueeze(0) if array.ndim == 2 else planes.permute(2, 0, 1)
        if peak is not None:
            planes = planes / peak
        out = self.process_planes(planes, seed=seed, outscale=outscale, progress=progress).cpu()
        del planes
        arr = (out[0] if array.ndim == 2 else out.permute(1, 2, 0)).numpy()
        if peak is None:
            return np.ascontiguousarray(arr, dtype=dtype)
        if dtype == np.bool_:
            return arr >= 0.5
        # In place: the output is the largest buffer of a call, avoid float temporaries of its size.
        np.multiply(arr, peak, out=arr)
        np.rint(arr, out=arr)
        return arr.astype(dtype)

    def _process_torch(self, t: torch.Tensor, *, seed: int | None, outscale: float | None,
                       progress: ProgressFn | None) -> torch.Tensor:
        if not t.is_floating_point():
            raise TypeError(f"expected a float tensor in [0, 1], got dtype {t.dtype}")
        if t.ndim == 3:
            return self.process_planes(t, seed=seed, outscale=outscale, progress=progress).to(t.dtype)
        if t.ndim == 4:
            # Each batch item is processed with the same seed, so a batch gives exactly what
            # processing each image alone gives.
            outs = [self.process_planes(item, seed=seed, outscale=outscale, progress=progress) for item in t]
            return torch.stack(outs).to(t.dtype)
        raise ValueError(f"expected a (C,H,W) or (B,C,H,W) tensor, got shape {tuple(t.shape)}")

    def process_planes(self, planes: torch.Tensor, *, seed: int | None = None, outscale: float | None = None,
                       progress: ProgressFn | None = None) -> torch.Tensor:
        """(C, H, W) float in [0, 1], C in 1..4 (L, LA, RGB, RGBA) -> (C, H', W') float32 in [0, 1]."""
        if planes.ndim != 3 or planes.shape[0] not in (1, 2, 3, 4):
            raise ValueError(f"expected (C,H,W) planes with C in 1..4, got shape {tuple(planes.shape)}")
        c, h, w = planes.shape
        if h < 1 or w < 1:
            raise ValueError(f"image has no pixels (size {w}x{h})")
        planes = planes.float()
        color, alpha = (planes[:1], planes[1:]) if c <= 2 else (planes[:3], planes[3:])
        rgb = color.expand(3, h, w) if c <= 2 else color
        # no_grad rather than inference_mode: callers may modify the returned tensor in place.
        with torch.no_grad():
            x, gen = rgb.unsqueeze(0).contiguous(), self.make_generator(seed)
            # `progress` is optional in the contract: only pass it to implementations that take it.
            takes_progress = "progress" in inspect.signature(self.upscale_rgb).parameters
            out = self.upscale_rgb(x, gen, progress) if takes_progress else self.upscale_rgb(x, gen)
            out = self._finite(out.float()[0]).clamp_(0.0, 1.0).to(planes.device)
            if out.shape[-2:] != (h * self.scale, w * self.scale):
                raise RuntimeError(f"upscaler returned {tuple(out.shape[-2:])} for a {h}x{w} input at scale "
                                   f"{self.scale}; expected {(h * self.scale, w * self.scale)}")
            if c <= 2:
                weights = torch.tensor(_LUMA, dtype=out.dtype, device=out.device).view(3, 1, 1)
                out = (out * weights).sum(0, keepdim=True)
            if alpha.shape[0]:
                out = torch.cat([out, self._upscale_alpha(alpha, out.shape[-2:], seed)])
            if outscale is not None:
                size = (max(1, round(h * outscale)), max(1, round(w * outscale)))
                out = resize_planes(out, size)
        return out

    def _upscale_alpha(self, alpha: torch.Tensor, size: torch.Size, seed: int | None) -> torch.Tensor:
        if self.alpha_upsampler == "bicubic":
            return resize_planes(alpha, size)
        if self.alpha_upsampler != "network":
            raise ValueError(f"alpha_upsampler must be 'bicubic' or 'network', got {self.alpha_upsampler!r}")
        x = alpha.expand(3, *alpha.shape[-2:]).unsqueeze(0).contiguous()
        with torch.no_grad():
            out = self._finite(self.upscale_rgb(x, self.make_generator(seed)).float()[0]).mean(0, keepdim=True)
        return out.clamp_(0.0, 1.0).to(alpha.device)

    def _finite(self, out: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).sum())
            raise NonFiniteOutputError(
                f"{self.model_name} produced NaN or infinite values ({bad:,} of {out.numel():,}) for this image "
                f"({self._precision()}); no output written: the weights are damaged or the computation overflowed")
        return out

    def _precision(self) -> str:
        dtype = getattr(self, "dtype", None)
        return f"{str(dtype).removeprefix('torch.')} on {self.device}" if dtype is not None else f"on {self.device}"

    # ------------------------------------------------------------------ files

    def process_file(self, src: str | os.PathLike, dst: str | os.PathLike, *, outscale: float | None = None,
                     seed: int | None = None, overwrite: bool = False, max_pixels: int | None = None,
                     quality: int = 95, progress: ProgressFn | None = None) -> Path:
        """Read `src` (EXIF orientation applied), upscale, write `dst` atomically (format from its suffix).

        Bit depth, gray/colour, alpha, the ICC profile and EXIF (less the orientation, already
        applied) are kept where the output format allows (16 bits only in PNG/TIFF; JPEG and BMP
        drop alpha; EXIF goes to JPEG/PNG/WebP); every frame of an animated or multi-page file is
        upscaled (JPEG/BMP outputs refuse those). Raises `sr4.image.io.ImageError` naming the
        file for unreadable input or unwritable output, FileExistsError when `dst` exists (also
        when it appears while this call works) and `overwrite` is False.
        """
        from sr4.image.io import read_image, write_image

        dst = Path(dst)
        if dst.exists() and not overwrite:
            raise FileExistsError(f"{dst}: output exists (overwrite it or skip it explicitly)")
        data = read_image(src, max_pixels=max_pixels, frames="all")
        write_image(dst, self.process_image_data(data, seed=seed, outscale=outscale, progress=progress),
                    quality=quality, overwrite=overwrite)
        return dst

    def process_image_data(self, data: ImageData, *, seed: int | None = None, outscale: float | None = None,
                           progress: ProgressFn | None = None) -> ImageData:
        """Upscale an `sr4.image.io.ImageData` (as `read_image` returns it), keeping its ICC and EXIF.

        Every frame of `data.animation` is upscaled with the same seed, so a still stays still.
        The result's `notes` hold the input's and what happened while processing."""
        from sr4.image.io import Animation, ImageData

        token = _CALL_NOTES.set([])
        try:
            if data.animation is None:
                pixels, animation = self.process_array(data.pixels, seed=seed, outscale=outscale,
                                                       progress=progress), None
            else:
                frames = [self.process_array(f, seed=seed, outscale=outscale, progress=progress)
                          for f in data.animation.frames]
                pixels = frames[0]
                animation = Animation(frames, list(data.animation.durations), data.animation.loop)
            notes = _CALL_NOTES.get() or []
        finally:
            _CALL_NOTES.reset(token)
        return ImageData(pixels=pixels, icc_profile=data.icc_profile, exif=data.exif,
                         notes=list(data.notes) + notes, animation=animation)


def resize_planes(planes: torch.Tensor, size: tuple[int, int] | Any) -> torch.Tensor:
    """Bicubic resize of (C,H,W) float planes to `size` (antialiased when shrinking), clamped to [0, 1]."""
    size = (int(size[0]), int(size[1]))
    if tuple(planes.shape[-2:]) == size:
        return planes
    shrinking = size[0] < planes.shape[-2] or size[1] < planes.shape[-1]
    out = F.interpolate(planes.unsqueeze(0).float(), size=size, mode="bicubic", align_corners=False,
                        antialias=shrinking)
    return out[0].clamp_(0.0, 1.0)
