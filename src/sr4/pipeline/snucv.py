"""`sr4.Pipeline`: the two-stage pipelines, U (MambaIRv2 x4) then M (TSD-SR), on any image.

pipeline="snucv" (NTIRE 2025 winner): U upsamples x4 (tiled like `sr4.Upscaler`), its output is
    quantised to 8 bits, round(U*255)/255 (a straight-through estimator keeps the gradient for
    training), mapped to [-1, 1] without clamping, and refined by M at full resolution on
    64-latent tiles; no colour fix by default.
pipeline="tsdsr" (original TSD-SR): bicubic x4 (F.interpolate, align_corners=False) to a size
    with short side >= 512 and both sides multiples of 8, M, then TSD-SR's 8-bit finish: the result
    truncated to 8 bits (its ToPILImage), resized back to exactly 4x with Pillow's BICUBIC, colour
    fixed against the 8-bit LR input (wavelet by default, with Pillow's x4 of the LR as reference)
    and truncated again. TSD-SR's --upscale (another factor than 4) is the `upscale` option.
"""

from __future__ import annotations

import os
import threading
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sr4.ops import quantize_8bit_ste, truncate_8bit
from sr4.pipeline.base import ImageProcessor
from sr4.refiner.colorfix import COLOR_FIXES, adain_color_fix, apply_color_fix, pil_bicubic, wavelet_transfer
from sr4.utils.progress import ProgressFn

PIPELINES = ("snucv", "tsdsr")
SEED_STREAMS = ("image", "run")
# Up to this many output pixels the VAE runs untiled (as SNUCV and TSD-SR do, bit for bit); larger
# images use VAE tiles so memory stays bounded. 2048^2 covers every DIV2K/NTIRE test output.
VAE_AUTO_TILE_PIXELS = 2048 * 2048


def tsdsr_process_size(h: int, w: int, upscale: int = 4, process_size: int = 512) -> tuple[int, int]:
    """TSD-SR's working size for an LR image of h x w: enlarge so the LR short side reaches
    process_size/upscale (int truncation, as the original), times upscale, floored to multiples of 8."""
    min_lr = process_size // upscale
    if w < min_lr or h < min_lr:
        scale = min_lr / min(w, h)
        w, h = int(scale * w), int(scale * h)
    h, w = upscale * h, upscale * w
    return h - h % 8, w - w % 8


def tsdsr_finish(refined: torch.Tensor, lr: torch.Tensor, color_fix: str, upscale: int = 4) -> torch.Tensor:
    """TSD-SR's post-processing in its own 8-bit steps: refined (B,3,h,w) at the working size and the
    LR input (B,3,H,W) -> (B,3,upscale*H,upscale*W) on the k/255 grid."""
    size = (upscale * lr.shape[-2], upscale * lr.shape[-1])
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
    (see `sr4.pipeline.base.ImageProcessor`), or use `process_file`.

    seed_stream: "image" (default) draws each call's random numbers from a generator seeded afresh, so a result
    depends only on the image and the seed; "run" seeds one generator at the first call and keeps drawing from
    it, call after call, as an official folder run after one `torch.manual_seed` does (results then depend on
    the order of the images; for one caller at a time: concurrent calls would share the stream).
    """

    scale = 4

    def __init__(self, refiner: nn.Module, upsampler: ImageProcessor | None, *,
                 pipeline: Literal["snucv", "tsdsr"] = "snucv", color_fix: str | None = None, seed: int = 0,
                 vae_tiling: bool | str = "auto", device: torch.device | None = None, process_size: int = 512,
                 upscale: int = 4, seed_stream: Literal["image", "run"] = "image"):
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
        if pipeline == "snucv" and upsampler is None:
            raise ValueError("the snucv pipeline needs an upsampler (stage U)")
        if pipeline == "snucv" and upscale != upsampler.scale:
            raise ValueError(f"the snucv pipeline upscales by its upsampler's factor {upsampler.scale}, not {upscale}")
        if not isinstance(upscale, int) or upscale < 1:
            raise ValueError(f"upscale must be a positive integer, got {upscale!r}")
        if seed_stream not in SEED_STREAMS:
            raise ValueError(f"seed_stream must be one of {', '.join(SEED_STREAMS)}, got {seed_stream!r}")
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
        self.scale = int(upscale)
        self.seed_stream = seed_stream
        self._stream: torch.Generator | None = None
        self._stream_lock = threading.Lock()
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
                       upsampler_dtype: str | torch.dtype | None = "fp32", process_size: int = 512,
                       upscale: int = 4, seed_stream: str = "image") -> Pipeline:
        """Load a SNUCV / TSD-SR model folder (the layout of SNUCV's model_zoo/team04_SNUCV; README, "Model
        files"). Every missing file is reported in one error.

        dtype applies to M (auto: fp16 on CUDA, fp32 on CPU); U runs in `upsampler_dtype` (fp32 as
        SNUCV). Tile options: latent tiles for the transformer (latents; TSD-SR's --latent_tiled_size /
        --latent_tiled_overlap), VAE tiles (encoder in pixels, decoder in latents, each without its halo of
        context, as TSD-SR's --vae_encoder_tiled_size / --vae_decoder_tiled_size; vae_tiling "auto" tiles
        only outputs above 2048x2048; vae_tile_stats: GroupNorm statistics of the whole image ("exact"),
        from a copy downscaled to vae_stat_size px ("fast"), or TSD-SR's own tiled VAE ("tsdsr", to
        reproduce its --is_use_tile outputs); "auto" is exact on CUDA and fast on CPU), and U's LR tiles
        ("auto": one pass whenever the image fits in memory, as SNUCV runs U; tiles leave the random stream
        where a single pass would, so M draws the same latent sample).
        process_size, upscale: tsdsr only, TSD-SR's --process_size (the smallest short side M works at)
        and --upscale. seed_stream: see `Pipeline`.
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
                        vae_tiling=vae_tiling, device=dev, process_size=process_size, upscale=upscale,
                        seed_stream=seed_stream)
        processor.model_name = f"the {pipeline} model folder {folder.root}"
        return processor

    def make_generator(self, seed: int | None = None) -> torch.Generator:
        if self.seed_stream == "image":
            return super().make_generator(seed)
        with self._stream_lock:
            if self._stream is None:
                self._stream = super().make_generator(seed)
            return self._stream

    def reset_stream(self) -> None:
        """seed_stream="run": start the stream again (the next call seeds it)."""
        with self._stream_lock:
            self._stream = None

    @property
    def device(self) -> torch.device:
        return self._device

    def __repr__(self) -> str:
        c = self.refiner.config
        return (f"Pipeline(pipeline={self.pipeline!r}, latent={c.latent!r}, color_fix={self.color_fix!r}, "
                f"latent_tile={c.latent_tile}, vae_tiling={self.vae_tiling!r}, device={str(self.device)!r}, "
                f"dtype={self.refiner.dtype}, seed={self.seed}, seed_stream={self.seed_stream!r}, "
                f"upscale={self.scale})")

    def _refine(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        tiled = self.vae_tiling
        if tiled == "auto":  # decided per call, without touching shared state (calls may run concurrently)
            tiled = x.shape[-2] * x.shape[-1] > VAE_AUTO_TILE_PIXELS
        return self.refiner(x, generator, vae_tiling=tiled)

    def upscale_rgb(self, x: torch.Tensor, generator: torch.Generator, progress: ProgressFn | None = None
                    ) -> torch.Tensor:
        """x (1,3,H,W) in [0,1] -> (1,3,sH,sW) float32 (s = self.scale, 4 unless a tsdsr upscale says otherwise)."""
        h, w = x.shape[-2:]
        if min(self.scale * h, self.scale * w) < self.refiner.vae_factor:
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
            nh, nw = tsdsr_process_size(h, w, upscale=self.scale, process_size=self.process_size)
            up = F.interpolate(x.to(self.device), size=(nh, nw), mode="bicubic", align_corners=False)
            if progress:
                progress(1, 2)
            out = tsdsr_finish(self._refine(up, generator).float(), x.to(self.device).float(), self.color_fix,
                               self.scale)
        if progress:
            progress(2, 2)
        return out

