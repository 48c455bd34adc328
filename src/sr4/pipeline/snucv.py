"""SNUCV (NTIRE 2025 Image SR x4, perceptual track winner): U, then its output rounded to 8 bits, then M.

U upsamples x4 (tiled like `sr4.Upscaler`; "auto" runs one pass whenever the image fits, as SNUCV runs U), its
output is quantised to 8 bits, round(U*255)/255 (a straight-through estimator keeps the gradient for training),
mapped to [-1, 1] without clamping, and refined by M at full resolution on 64-latent tiles; no colour fix by
default. U and M draw from one generator, U first (its routing noise), then M's latent sample, as the official
code draws from torch's one global stream.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from sr4.errors import ConfigError
from sr4.ops import quantize_8bit_ste
from sr4.pipeline.configs import SNUCVConfig
from sr4.pipeline.two_stage import Pipeline
from sr4.pipeline.upscaler import Upscaler
from sr4.refiner.colorfix import apply_color_fix
from sr4.refiner.tsdsr import TSDSRRefiner
from sr4.utils.progress import ProgressFn


def snucv_forward(upsampler: nn.Module, refiner: nn.Module, lr: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Differentiable SNUCV forward for training U through the frozen M: M(q8(U(lr))), untiled U."""
    up = upsampler(lr, generator=generator)
    return refiner(quantize_8bit_ste(up), generator)


class SNUCVPipeline(Pipeline):
    """U (an `Upscaler` on the folder's mamba_trained.pth, or on `config.upsampler`: any x4 model) then M, from a
    `SNUCVConfig`."""

    method = "snucv"
    config_class = SNUCVConfig
    clamp_input = False
    config: SNUCVConfig

    def __init__(self, refiner: TSDSRRefiner, upsampler: Upscaler, config: SNUCVConfig | None = None,
                 device: torch.device | None = None):
        super().__init__(refiner, config or SNUCVConfig(), device)
        self.upsampler = upsampler
        self.scale = int(upsampler.scale)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, config: SNUCVConfig) -> SNUCVPipeline:
        folder, device = cls.validate_folder(model_dir, config)
        tiles = config.upsampler_tiles
        # U first: a wrong stage U is reported before the refiner is loaded
        spec = folder.upsampler if config.upsampler is None else config.upsampler
        upsampler = Upscaler(spec, tile=tiles.tile, tile_overlap=tiles.overlap, device=device,
                             dtype=config.upsampler_dtype, seed=config.seed)
        if upsampler.scale != 4:
            raise ConfigError(f"stage U of the snucv pipeline must upscale x4 (the refiner works at x4 of the input); "
                              f"{upsampler.model_name} is x{upsampler.scale}")
        refiner = cls.load_refiner(folder, config, device)
        pipe = cls(refiner, upsampler, config, device)
        pipe.model_name = f"the snucv model folder {folder.root}" + (
            "" if config.upsampler is None else f" with {upsampler.model_name} as stage U")
        return pipe

    def upscale_rgb(self, x: torch.Tensor, generator: torch.Generator, progress: ProgressFn | None = None
                    ) -> torch.Tensor:
        """x (1,3,H,W) in [0,1] -> (1,3,sH,sW) float32 (s = U's factor)."""
        self.check_size(*x.shape[-2:])
        if progress:
            progress(0, 2)
        up = self.upsampler.upscale_rgb(x, generator)
        if progress:
            progress(1, 2)
        out = self.refine(quantize_8bit_ste(up.to(self.device)), generator).float()
        out = apply_color_fix(self.color_fix, out, x.to(out.device).float())
        if progress:
            progress(2, 2)
        return out
