"""`sr4.Pipeline`: the base of the two-stage pipelines (a refiner M on SD3, after an upsampling step).

One class per method, each built from its config dataclass (`sr4.pipeline.configs`):

* `SNUCVPipeline` (`sr4.pipeline.snucv`, NTIRE 2025 winner): U (MambaIRv2 x4), 8-bit rounding, M;
* `TSDSRPipeline` (`sr4.pipeline.tsdsr`, the original TSD-SR): bicubic to M's working size, M, TSD-SR's 8-bit
  finish and colour fix.

`Pipeline.from_model_dir(dir, pipeline="snucv" | "tsdsr", ...)` picks the method; each subclass's own
`from_model_dir(dir, config, **overrides)` builds it. What the two share lives here: loading the refiner from
a model folder, the per-call generator (or one stream per run), the VAE tiling decision per call. Per-call
choices (VAE tiling, input clamping) travel with each call to the refiner, never into the shared refiner.
"""

from __future__ import annotations

import os
import threading
from importlib import import_module
from typing import Any, ClassVar, cast

import torch

from sr4.errors import ConfigError
from sr4.pipeline.base import ImageProcessor
from sr4.pipeline.configs import PIPELINES, PipelineConfig, config_class, with_options
from sr4.refiner.folder import ModelFolder, validate_model_folder
from sr4.refiner.tsdsr import TSDSRRefiner
from sr4.utils.device import resolve_device, resolve_dtype

#: method name -> "module:class" of its pipeline (imported when that method is asked for).
PIPELINE_CLASSES = {"snucv": "sr4.pipeline.snucv:SNUCVPipeline", "tsdsr": "sr4.pipeline.tsdsr:TSDSRPipeline"}


def pipeline_class(method: str) -> type[Pipeline]:
    """The pipeline class of a method name ("snucv", "tsdsr")."""
    if method not in PIPELINE_CLASSES:
        raise ConfigError(f"pipeline must be one of {', '.join(PIPELINES)}, got {method!r}")
    module, name = PIPELINE_CLASSES[method].split(":")
    cls: type[Pipeline] = getattr(import_module(module), name)
    return cls


class Pipeline(ImageProcessor):
    """U (or bicubic) then M. Build one with `Pipeline.from_model_dir`; call it on PIL images, arrays or tensors
    (see `sr4.pipeline.base.ImageProcessor`), or use `process_file`.

    seed_stream (config): "image" (default) draws each call's random numbers from a generator seeded afresh, so a
    result depends only on the image and the seed; "run" seeds one generator at the first call and keeps drawing
    from it, call after call, as an official folder run after one `torch.manual_seed` does (results then depend on
    the order of the images; for one caller at a time: concurrent calls would share the stream).
    """

    #: the method's name ("snucv", "tsdsr") and its config class.
    method: ClassVar[str]
    config_class: ClassVar[type[PipelineConfig]]
    #: whether M's input is clamped to [-1, 1] (TSD-SR clamps its bicubic input; SNUCV feeds U's output as is).
    clamp_input: ClassVar[bool] = False

    def __init__(self, refiner: TSDSRRefiner, config: PipelineConfig, device: torch.device | None = None):
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} takes a {self.config_class.__name__}, got "
                              f"{type(config).__name__}")
        self.refiner = refiner
        self.config = config
        self.seed = int(config.seed)
        self._stream: torch.Generator | None = None
        self._stream_lock = threading.Lock()
        self._device = device if device is not None else refiner.device

    # ------------------------------------------------------------------ building

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike[str], config: PipelineConfig | None = None, *,
                       pipeline: str | None = None, **overrides: Any) -> Pipeline:
        """Load a SNUCV / TSD-SR model folder (the layout of SNUCV's model_zoo/team04_SNUCV; docs/method.md,
        "Model folder"). Every missing file is reported in one error.

        `pipeline` names the method when called on `Pipeline` itself ("snucv" by default); `config` is the method's
        config dataclass (its defaults when None); `overrides` replace single options by their flat names
        (`sr4.pipeline.configs.OPTION_PATHS`: latent, latent_tile, vae_tiling, vae_tile_stats, upsampler_tile,
        dtype, seed, seed_stream, process_size, ...).
        """
        if cls is Pipeline:
            cls = pipeline_class(pipeline or (config_method(config) if config is not None else "snucv"))
        elif pipeline not in (None, cls.method):
            raise ConfigError(f"{cls.__name__} is the {cls.method} pipeline, not {pipeline!r}")
        config = with_options(config if config is not None else cls.config_class(), **overrides)
        return cls.load(model_dir, config)

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str], config: Any) -> Pipeline:
        """Build the method's pipeline from a model folder and a complete config."""
        raise NotImplementedError

    @staticmethod
    def load_refiner(folder: ModelFolder, config: PipelineConfig, device: torch.device) -> TSDSRRefiner:
        return TSDSRRefiner.from_model_dir(folder.root, device=device, dtype=resolve_dtype(config.dtype, device),
                                           merge=config.merge_lora, config=config.refiner, folder=folder)

    @classmethod
    def validate_folder(cls, model_dir: str | os.PathLike[str], config: PipelineConfig
                        ) -> tuple[ModelFolder, torch.device]:
        # SNUCV needs the folder's mamba_trained.pth unless another stage U is given
        need_upsampler = cls.method == "snucv" and getattr(config, "upsampler", None) is None
        return validate_model_folder(model_dir, need_upsampler=need_upsampler), resolve_device(config.device)

    # ------------------------------------------------------------------ per call

    @property
    def pipeline(self) -> str:
        """The method's name."""
        return self.method

    @property
    def color_fix(self) -> str:
        return self.config.color_fix

    @property
    def device(self) -> torch.device:
        return self._device

    def make_generator(self, seed: int | None = None) -> torch.Generator:
        if self.config.seed_stream == "image":
            return super().make_generator(seed)
        with self._stream_lock:
            if self._stream is None:
                self._stream = super().make_generator(seed)
            return self._stream

    def reset_stream(self) -> None:
        """seed_stream="run": start the stream again (the next call seeds it)."""
        with self._stream_lock:
            self._stream = None

    def check_size(self, h: int, w: int) -> None:
        if min(self.scale * h, self.scale * w) < self.refiner.vae_factor:
            raise ValueError(f"image of {w}x{h} px is too small for the refiner (output sides must be >= "
                             f"{self.refiner.vae_factor} px)")

    def refine(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """M on x (B,3,H,W) in [0,1]: VAE tiling decided for this call's size (a config left at None means
        "auto" here), the method's input clamping; shared state is not touched (calls may run concurrently)."""
        tiling = self.refiner.config.vae_tiling
        out = self.refiner(x, generator, vae_tiling="auto" if tiling is None else tiling, clamp_input=self.clamp_input)
        return cast(torch.Tensor, out)

    def __repr__(self) -> str:
        c = self.refiner.config
        return (f"{type(self).__name__}(latent={c.latent!r}, color_fix={self.color_fix!r}, "
                f"latent_tile={c.latent_tile}, vae_tiling={c.vae_tiling!r}, device={str(self.device)!r}, "
                f"dtype={self.refiner.dtype}, seed={self.seed}, seed_stream={self.config.seed_stream!r}, "
                f"upscale={self.scale})")


def config_method(config: PipelineConfig) -> str:
    """The method a config belongs to."""
    for name in PIPELINES:
        if type(config) is config_class(name):
            return name
    raise ConfigError(f"not a pipeline config: {type(config).__name__}")

