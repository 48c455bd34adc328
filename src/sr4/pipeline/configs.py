"""Configuration of the two-stage pipelines: one dataclass per method, the refiner's options inside.

`SNUCVConfig` and `TSDSRConfig` share `PipelineConfig` (the refiner, its dtype, colour fix, seeding, device) and
add their own: SNUCV's upsampler tiles and precision, TSD-SR's working size and factor. Their defaults are the
official code's. `Pipeline.from_model_dir(dir, config, **overrides)` takes the overrides by the flat names of
`OPTION_PATHS` (also `sr4 upscale`'s flags): this table is the one place a flat option meets its config field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch

from sr4.errors import ConfigError
from sr4.pipeline.tiling import TileOptions
from sr4.refiner.colorfix import COLOR_FIXES
from sr4.refiner.tsdsr import RefinerConfig

PIPELINES = ("snucv", "tsdsr")
SEED_STREAMS = ("image", "run")


@dataclass(frozen=True)
class PipelineConfig:
    """What both methods take. refiner: M's options (latent, latent and VAE tiles; `sr4.refiner.tsdsr`);
    dtype: M's precision ("auto": fp16 on CUDA, fp32 on CPU); merge_lora: fold the LoRA weights in once;
    color_fix: none | wavelet | adain after M; seed: the default seed of a call; seed_stream: "image" (each call
    seeded afresh) or "run" (one stream across calls, as an official folder run); device: where M (and U) run."""

    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    dtype: str | torch.dtype | None = "auto"
    merge_lora: bool = False
    color_fix: str = "none"
    seed: int = 0
    seed_stream: Literal["image", "run"] = "image"
    device: str | torch.device | None = "auto"

    def __post_init__(self) -> None:
        if self.color_fix not in COLOR_FIXES:
            raise ConfigError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")
        if self.seed_stream not in SEED_STREAMS:
            raise ConfigError(f"seed_stream must be one of {', '.join(SEED_STREAMS)}, got {self.seed_stream!r}")


@dataclass(frozen=True)
class SNUCVConfig(PipelineConfig):
    """SNUCV (NTIRE 2025): U's LR tiles ("auto": one pass whenever the image fits in memory, as SNUCV runs U) and
    U's precision (fp32, as SNUCV); no colour fix by default. `upsampler` replaces stage U: None (SNUCV's own, the
    folder's mamba_trained.pth) or any x4 model `sr4.Upscaler` takes (a checkpoint of a registered architecture,
    spandrel's included, "bicubic", a module or a descriptor)."""

    upsampler_tiles: TileOptions = TileOptions("auto", 16)
    upsampler_dtype: str | torch.dtype | None = "fp32"
    upsampler: Any = None


@dataclass(frozen=True)
class TSDSRConfig(PipelineConfig):
    """TSD-SR: `process_size`, the smallest short side M works at (its --process_size), and `upscale`, the factor
    (its --upscale); its default colour fix is wavelet."""

    color_fix: str = "wavelet"
    process_size: int = 512
    upscale: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.upscale, bool) or not isinstance(self.upscale, int) or self.upscale < 1:
            raise ConfigError(f"upscale must be a positive integer, got {self.upscale!r}")


CONFIGS: dict[str, type[PipelineConfig]] = {"snucv": SNUCVConfig, "tsdsr": TSDSRConfig}

#: flat option name (a keyword of `from_model_dir`, a flag of `sr4 upscale`) -> field path in the config.
OPTION_PATHS = {
    "latent": "refiner.latent",
    "latent_tile": "refiner.latent_tile",
    "latent_overlap": "refiner.latent_overlap",
    "vae_tiling": "refiner.vae_tiling",
    "vae_encoder_tile": "refiner.vae_encoder_tile",
    "vae_decoder_tile": "refiner.vae_decoder_tile",
    "vae_encoder_halo": "refiner.vae_encoder_halo",
    "vae_decoder_halo": "refiner.vae_decoder_halo",
    "vae_tile_stats": "refiner.vae_tile_stats",
    "vae_stat_size": "refiner.vae_stat_size",
    "dtype": "dtype",
    "merge_lora": "merge_lora",
    "color_fix": "color_fix",
    "seed": "seed",
    "seed_stream": "seed_stream",
    "device": "device",
    "upsampler_tile": "upsampler_tiles.tile",
    "upsampler_tile_overlap": "upsampler_tiles.overlap",
    "upsampler_dtype": "upsampler_dtype",
    "upsampler": "upsampler",
    "process_size": "process_size",
    "upscale": "upscale",
}


def config_class(pipeline: str) -> type[PipelineConfig]:
    try:
        return CONFIGS[pipeline]
    except KeyError:
        raise ConfigError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}") from None


def _replace_all(config: Any, changes: dict[str, Any]) -> Any:
    """`config` with nested changes ({"refiner": {"latent_tile": 8, ...}, "seed": 3}) applied at once per
    dataclass, so a combination of values is validated together."""
    values = {name: _replace_all(getattr(config, name), value) if isinstance(value, dict) else value
              for name, value in changes.items()}
    return cast(Any, dataclasses.replace(config, **values))


def with_options(config: PipelineConfig, **options: Any) -> PipelineConfig:
    """`config` with flat options applied (None keeps the config's value for color_fix and vae_tiling). An option
    of the other method is accepted at its default value only (front ends pass every option); any other value
    is a ConfigError."""
    method = next(name for name, cls in CONFIGS.items() if isinstance(config, cls))
    changes: dict[str, Any] = {}
    for name, value in options.items():
        if name not in OPTION_PATHS:
            raise ConfigError(f"unknown {method} pipeline option {name!r}; valid: {', '.join(OPTION_PATHS)}")
        if value is None and name in ("color_fix", "vae_tiling"):
            continue  # the method's default
        path = OPTION_PATHS[name].split(".")
        if not _has_path(type(config), path):
            other = next(c for n, c in CONFIGS.items() if n != method)
            if _default_of(other, path) == value:
                continue
            users = [n for n, c in CONFIGS.items() if _has_path(c, path)]
            raise ConfigError(f"{name} applies to the {' and '.join(users)} pipeline, not {method}")
        node = changes
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return cast(PipelineConfig, _replace_all(config, changes))


def _has_path(cls: type, path: list[str]) -> bool:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return path[0] in fields


def _default_of(cls: type[PipelineConfig], path: list[str]) -> Any:
    value: Any = cls()
    for part in path:
        value = getattr(value, part, None)
    return value
