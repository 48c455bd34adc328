"""TSD-SR (the original one-step refiner's own pipeline): bicubic to M's working size, M, TSD-SR's 8-bit finish.

Bicubic x4 (F.interpolate, align_corners=False) to a size with short side >= process_size and both sides
multiples of 8, M (input clamped to [-1, 1]), then TSD-SR's 8-bit finish: the result truncated to 8 bits (its
ToPILImage), resized back to exactly `upscale` x with Pillow's BICUBIC, colour fixed against the 8-bit LR input
(wavelet by default, with Pillow's resize of the LR as reference) and truncated again
(Microtreei/TSD-SR, ``test/test_tsdsr.py``). `upscale` is TSD-SR's --upscale.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from sr4.ops import quantize_8bit_ste, truncate_8bit
from sr4.pipeline.configs import TSDSRConfig
from sr4.pipeline.two_stage import Pipeline
from sr4.refiner.colorfix import adain_color_fix, pil_bicubic, wavelet_transfer
from sr4.refiner.tsdsr import TSDSRRefiner
from sr4.utils.progress import ProgressFn


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


class TSDSRPipeline(Pipeline):
    """Bicubic then M, from a `TSDSRConfig`."""

    method = "tsdsr"
    config_class = TSDSRConfig
    clamp_input = True
    upsampler = None  # no stage U: bicubic
    config: TSDSRConfig

    def __init__(self, refiner: TSDSRRefiner, config: TSDSRConfig | None = None, device: torch.device | None = None):
        super().__init__(refiner, config or TSDSRConfig(), device)
        self.scale = int(self.config.upscale)
        self.process_size = int(self.config.process_size)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, config: TSDSRConfig) -> TSDSRPipeline:
        folder, device = cls.validate_folder(model_dir, config)
        pipe = cls(cls.load_refiner(folder, config, device), config, device)
        pipe.model_name = f"the tsdsr model folder {folder.root}"
        return pipe

    def upscale_rgb(self, x: torch.Tensor, generator: torch.Generator, progress: ProgressFn | None = None
                    ) -> torch.Tensor:
        """x (1,3,H,W) in [0,1] -> (1,3,sH,sW) on the k/255 grid (s = upscale)."""
        h, w = x.shape[-2:]
        self.check_size(h, w)
        if progress:
            progress(0, 2)
        nh, nw = tsdsr_process_size(h, w, upscale=self.scale, process_size=self.process_size)
        up = F.interpolate(x.to(self.device), size=(nh, nw), mode="bicubic", align_corners=False)
        if progress:
            progress(1, 2)
        out = tsdsr_finish(self.refine(up, generator).float(), x.to(self.device).float(), self.color_fix, self.scale)
        if progress:
            progress(2, 2)
        return out
