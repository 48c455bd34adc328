"""`sr4.Pipeline`: the two-stage pipelines, U (MambaIRv2 x4) then M (TSD-SR), on any image.

pipeline="snucv" (NTIRE 2025 winner): U upsamples x4 (tiled like `sr4.Upscaler`), its output is
    quantised to 8 bits, round(U*255)/255 (a straight-through estimator keeps the gradient for
    training), mapped to [-1, 1] without clamping, and refined by M at full resolution on
    64-latent tiles; no colour fix by default.
pipeline="tsdsr" (original TSD-SR): bicubic x4 (F.interpolate, align_corners=False) to a size
    with short side >= 512 and both sides multiples of 8, M, then TSD-SR's 8-bit finish: the result
    truncated to 8 bits (its ToPILImage), resized back to exactly 4x with Pillow's BICUBIC, colour
    fixed against the 8-bit LR input (wavelet by default, with Pillow's x4 of the LR as reference)
    and truncated again.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sr4.pipeline.base import ImageProcessor, ProgressFn
from sr4.refiner.colorfix import (
    COLOR_FIXES,
    adain_color_fix,
    apply_color_fix,
    pil_bicubic,
    truncate_8bit,
    wavelet_transfer,
)

PIPELINES = ("snucv", "tsdsr")
# Up to this many output pixels the VAE runs untiled (as SNUCV and TSD-SR do, bit for bit); larger
# images use VAE tiles so memory stays bounded. 2048^2 covers every DIV2K/NTIRE test output.
VAE_AUTO_TILE_PIXELS = 2048 * 2048


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255) / 255

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def quantize_8bit_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x*255)/255 in the forward pass, identity gradient in the backward pass (not clamped)."""
    return _RoundSTE.apply(x)


def tsdsr_process_size(h: int, w: int, upscale: int = 4, process_size: int = 512) -> tuple[int, int]:
    """TSD-SR's working size for an LR image of h x w: enlarge so the LR short side reaches
    process_size/upscale (int truncation, as the original), times upscale, floored to multiples of 8."""
    min_lr = process_size // upscale
    if w < min_lr or h < min_lr:
        scale = min_lr / min(w, h)
        w, h = int(scale * w), int(scale * h)
    h, w = upscale * h, upscale * w
    return h - h % 8, w - w % 8


def tsdsr_finish(refined: torch.Tensor, lr: torch.Tensor, color_fix: str) -> torch.Tensor:
    """TSD-SR's post-processing in its own 8-bit steps: refined (B,3,h,w) at the working size and the
    LR input (B,3,H,W) -> (B,3,4H,4W) on the k/255 grid."""
    size = (4 * lr.shape[-2], 4 * lr.shape[-1])
    out = pil_bicubic(truncate_8bit(refined), size)  # ToPILImage, then Image.resize when the size changed
    lr8 = quantize_8bit_ste(lr.clamp(0, 1))  # TSD-SR reads the LR as 8-bit RGB
    if color_fix == "wavelet":
        return truncate_8bit(wavelet_transfer(out, pil_bicubic(lr8, size)))
    if color_fix == "adain":
        return truncate_8bit(adain_color_fix(out, lr8))
    return out


def snucv_forward(upsampler: nn.Module, refiner: nn.Module, lr: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Differentiable SNUCV forward for training U through the frozen M: M(q8(U(lr))), untiled U."""
    up = upsampler(lr, generator=generator)
    return refiner(quantize_8bit_ste(up), generator)


class Pipeline(ImageProcessor):
    """U then M. Build it with `Pipeline.from_model_dir`; call it on PIL images, arrays or tensors
    (see `sr4.pipeline.base.ImageProcessor`), or use `process_file`."""

    scale = 4

    def __init__(self, refiner: nn.Module, upsampler: ImageProcessor | None, *,
                 pipeline: Literal["snucv", "tsdsr"] = "snucv", color_fix: str | None = None, seed: int = 0,
                 vae_tiling: bool | str = "auto", device: torch.device | None = None, process_size: int = 512):
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
        if pipeline == "snucv" and upsampler is None:
            raise ValueError("the snucv pipeline needs an upsampler (stage U)")
        color_fix = color_fix or ("wavelet" if pipeline == "tsdsr" else "none")
        if color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {color_fix!r}")
        if vae_tiling not in (True, False, "auto"):
            raise ValueError(f"vae_tiling must be True, False or 'auto', got {vae_tiling!r}")
        self.refiner = refiner
        self.upsampler = upsampler
        self.pipeline = pipeline
        self.color_fix = color_fix
        self.seed = int(seed)
        self.vae_tiling = vae_tiling
        self.process_size = int(process_size)
        self._device = device if device is not None else refiner.device
        # TSD-SR clamps its bicubic input to [-1, 1]; SNUCV feeds the quantised U output unclamped.
        refiner.config.clamp_input = pipeline == "tsdsr"

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, pipeline: str = "snucv", latent: str = "sample",
                       color_fix: str | None = None, device: str | torch.device | None = "auto",
                       dtype: str | torch.dtype | None = "auto", seed: int = 0, *, merge_lora: bool = False,
                       latent_tile: int = 64, latent_overlap: int = 8, vae_tiling: bool | str = "auto",
                       vae_encoder_tile: int = 1024, vae_decoder_tile: int = 224, vae_encoder_halo: int = 32,
                       vae_decoder_halo: int = 11, vae_tile_stats: str = "auto", vae_stat_size: int = 512,
                       upsampler_tile: int | str | None = "auto", upsampler_tile_overlap: int = 16,
                       upsampler_dtype: str | torch.dtype | None = "fp32", process_size: int = 512) -> Pipeline:
        """Load a SNUCV / TSD-SR model folder (SPEC §4). Every missing file is reported in one error.

        dtype applies to M (auto: fp16 on CUDA, fp32 on CPU); U runs in `upsampler_dtype` (fp32 as
        SNUCV). Tile options: latent tiles for the transformer (latents), VAE tiles (encoder in
        pixels, decoder in latents, each with a halo of context; "auto" tiles only outputs above
        2048x2048; vae_tile_stats: GroupNorm statistics aggregated over all tiles ("exact", TSD-SR's
        tiled mode), or from a copy downscaled to vae_stat_size px ("fast"); "auto" is exact on CUDA
        and fast on CPU), and U's LR tiles.
        process_size: tsdsr only, the smallest short side M works at (TSD-SR: 512).
        """
        from sr4.refiner.folder import validate_model_folder
        from sr4.refiner.tsdsr import RefinerConfig, TSDSRRefiner
        from sr4.utils.device import resolve_device, resolve_dtype

        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
        folder = validate_model_folder(model_dir, need_upsampler=pipeline == "snucv")
        dev = resolve_device(device)
        config = RefinerConfig(latent=latent, seed=seed, latent_tile=latent_tile, latent_overlap=latent_overlap,
                               vae_encoder_tile=vae_encoder_tile, vae_decoder_tile=vae_decoder_tile,
                               vae_encoder_halo=vae_encoder_halo, vae_decoder_halo=vae_decoder_halo,
                               vae_tile_stats=vae_tile_stats, vae_stat_size=vae_stat_size)
        refiner = TSDSRRefiner.from_model_dir(folder.root, device=dev, dtype=resolve_dtype(dtype, dev),
                                              merge=merge_lora, config=config, folder=folder)
        upsampler = None
        if pipeline == "snucv":
            from sr4.pipeline.upscaler import Upscaler

            upsampler = Upscaler(folder.upsampler, tile=upsampler_tile, tile_overlap=upsampler_tile_overlap,
                                 device=dev, dtype=upsampler_dtype, seed=seed)
        processor = cls(refiner, upsampler, pipeline=pipeline, color_fix=color_fix, seed=seed,
                        vae_tiling=vae_tiling, device=dev, process_size=process_size)
        processor.model_name = f"the {pipeline} model folder {folder.root}"
        return processor

    @property
    def device(self) -> torch.device:
        return self._device

    def __repr__(self) -> str:
        c = self.refiner.config
        return (f"Pipeline(pipeline={self.pipeline!r}, latent={c.latent!r}, color_fix={self.color_fix!r}, "
                f"latent_tile={c.latent_tile}, vae_tiling={self.vae_tiling!r}, device={str(self.device)!r}, "
                f"dtype={self.refiner.dtype}, seed={self.seed})")

    def _refine(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        tiled = self.vae_tiling
        if tiled == "auto":  # decided per call, without touching shared state (calls may run concurrently)
            tiled = x.shape[-2] * x.shape[-1] > VAE_AUTO_TILE_PIXELS
        return self.refiner(x, generator, vae_tiling=tiled)

    def upscale_rgb(self, x: torch.Tensor, generator: torch.Generator, progress: ProgressFn | None = None
                    ) -> torch.Tensor:
        """x (1,3,H,W) in [0,1] -> (1,3,4H,4W) float32."""
        h, w = x.shape[-2:]
        if min(4 * h, 4 * w) < self.refiner.vae_factor:
            raise ValueError(f"image of {w}x{h} px is too small for the refiner (output sides must be >= "
                             f"{self.refiner.vae_factor} px)")
        if progress:
            progress(0, 2)
        if self.pipeline == "snucv":
            up = self.upsampler.upscale_rgb(x, generator)
            if progress:
                progress(1, 2)
            out = self._refine(quantize_8bit_ste(up.to(self.device)), generator).float()
            out = apply_color_fix(self.color_fix, out, x.to(out.device).float())
        else:
            nh, nw = tsdsr_process_size(h, w, process_size=self.process_size)
            up = F.interpolate(x.to(self.device), size=(nh, nw), mode="bicubic", align_corners=False)
            if progress:
                progress(1, 2)
            out = tsdsr_finish(self._refine(up, generator).float(), x.to(self.device).float(), self.color_fix)
        if progress:
            progress(2, 2)
        return out

