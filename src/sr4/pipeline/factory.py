"""The one function that builds an image processor from options: `sr4 upscale`, `sr4 eval --lr-dir`, `sr4 serve`.

`ProcessorOptions` holds every option of `sr4 upscale` that shapes the processor; the command line maps its flags
to it in one place (`sr4.cli.options.processor_options`), the web app builds it from its own command line. What
the options mean for a method is decided by that method's config (`sr4.pipeline.configs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sr4.errors import ConfigError
from sr4.pipeline.base import ImageProcessor
from sr4.pipeline.configs import config_class

#: --pipeline values: the upsampler alone, or a two-stage method.
PROCESSORS = ("upsampler", "snucv", "tsdsr")
VAE_TILING = {"auto": "auto", "on": True, "off": False}


@dataclass(frozen=True)
class ProcessorOptions:
    """The `sr4 upscale` options a processor is built with (the web app chooses the seed per job)."""

    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    alpha: str = "bicubic"
    tile: int | str | None = "auto"
    tile_overlap: int = 16
    latent: str = "sample"
    color_fix: str | None = None
    merge_lora: bool = False
    vae_tiling: str = "auto"
    vae_tile_stats: str = "auto"
    vae_encoder_tile: int = 1024
    vae_decoder_tile: int = 224
    latent_tile: int = 64
    latent_overlap: int = 8
    process_size: int = 512
    upscale: int = 4
    seed_stream: str = "image"


def build_processor(pipeline: str, model: str | None, model_dir: str | None, options: ProcessorOptions
                    ) -> ImageProcessor:
    """An `Upscaler` (pipeline "upsampler": `model` None = the bundled default, "bicubic" or a checkpoint of any
    registered architecture, spandrel's included), or the two-stage pipeline of `model_dir` ("snucv", "tsdsr"; for
    snucv `model` replaces stage U, default the folder's mamba_trained.pth). Raises ConfigError for options that do
    not fit."""
    if pipeline not in PROCESSORS:
        raise ConfigError(f"--pipeline must be one of {', '.join(PROCESSORS)}, got {pipeline!r}")
    if pipeline == "upsampler":
        from sr4.pipeline.upscaler import Upscaler

        return Upscaler(model, tile=options.tile, tile_overlap=options.tile_overlap, device=options.device,
                        dtype=options.dtype, seed=options.seed, alpha=options.alpha)
    if model_dir is None:
        raise ConfigError(f"--pipeline {pipeline} needs --model-dir DIR (the SD3 / TSD-SR model folder)")
    if model is not None and pipeline != "snucv":
        raise ConfigError(f"--model applies to --pipeline upsampler and snucv (its stage U); --pipeline {pipeline} "
                          "takes its networks from --model-dir")
    if pipeline == "snucv" and options.upscale != 4:
        raise ConfigError("--upscale applies to --pipeline tsdsr; snucv upscales x4 (its upsampler's factor)")
    from sr4.pipeline.two_stage import Pipeline

    # --tile / --tile-overlap size the upsampler's tiles; the refiner keeps TSD-SR's latent tiles.
    processor = Pipeline.from_model_dir(
        model_dir, pipeline=pipeline, latent=options.latent,
        color_fix=options.color_fix or config_class(pipeline)().color_fix, device=options.device,
        dtype=options.dtype, seed=options.seed, merge_lora=options.merge_lora,
        vae_tiling=VAE_TILING[options.vae_tiling], vae_tile_stats=options.vae_tile_stats,
        upsampler_tile=options.tile, upsampler_tile_overlap=options.tile_overlap,
        vae_encoder_tile=options.vae_encoder_tile, vae_decoder_tile=options.vae_decoder_tile,
        latent_tile=options.latent_tile, latent_overlap=options.latent_overlap, process_size=options.process_size,
        upscale=options.upscale, seed_stream=options.seed_stream, upsampler=model)
    processor.alpha_upsampler = options.alpha  # an ImageProcessor rule, the same for every pipeline
    return processor
