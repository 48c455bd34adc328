"""Stage M: TSD-SR, a one-step diffusion refiner on SD3 (transformer + VAE with TSD-SR's LoRA).

Math (TSD-SR `test/test_tsdsr.py`): with x in [-1, 1],
    z  = E(x).sample() * scaling_factor          (no shift_factor)
    v  = transformer(z, prompt_embeds, pooled, t=1000)
    z0 = z - v
    y  = D(z0 / scaling_factor).clamp(-1, 1) * 0.5 + 0.5

The forward is differentiable with respect to its input while every parameter is frozen, so a
trainer can back-propagate a loss on M's output into the upsampler. No torch.no_grad() is used on
the math path: the caller decides (the pipelines wrap inference in torch.inference_mode()).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sr4.checkpoints import load_object
from sr4.errors import CheckpointError
from sr4.optional import require
from sr4.refiner.folder import ModelFolder, validate_model_folder
from sr4.refiner.lora import TRANSFORMER_TARGETS, VAE_TARGETS, attach_lora, merge_lora, read_lora_file
from sr4.refiner.tiling import VAETileConfig, run_latent_tiles, run_vae_tiled
from sr4.refiner.vae_exact import decoder_steps, encoder_steps, run_vae_tiled_exact
from sr4.refiner.vae_tsdsr import run_vae_tiled_tsdsr, tsdsr_needs_tiles

TIMESTEP = 1000.0
VAE_TILE_STATS = ("auto", "exact", "fast", "tsdsr")
# vae_tiling="auto": up to this many output pixels the VAE runs untiled (as SNUCV and TSD-SR do, bit for bit);
# larger images use VAE tiles so memory stays bounded. 2048^2 covers every DIV2K/NTIRE test output.
VAE_AUTO_TILE_PIXELS = 2048 * 2048


@dataclass
class RefinerConfig:
    """Options of the refiner (the one configuration of stage M: the pipelines and training build it too).

    Tile sizes: latent tiles in latents, VAE encoder tiles in pixels, VAE decoder tiles in latents (TSD-SR
    defaults: 64/8, 1024, 224). As in TSD-SR (`--vae_encoder_tiled_size`, `--vae_decoder_tiled_size`), a VAE tile
    size excludes its halo (padding) of context on each side, and a tiled VAE call tiles only once a side exceeds
    tile + 2 x halo. vae_tiling: True, False, "auto" (tiles above 2048x2048 output pixels) or None (not set: off
    for the refiner alone, "auto" in the pipelines). clamp_input: the default of `forward(clamp_input=)`."""

    latent: Literal["sample", "mean"] = "sample"
    seed: int = 0  # used when forward() gets no generator, so repeated calls give the same image
    latent_tile: int = 64
    latent_overlap: int = 8
    vae_tiling: bool | Literal["auto"] | None = None
    vae_encoder_tile: int = 1024
    vae_encoder_halo: int = 32
    vae_decoder_tile: int = 224
    vae_decoder_halo: int = 11
    # GroupNorm statistics of VAE tiles: "exact" merges them over the tile cores, i.e. the whole image's
    # (tile states wait in host memory), "fast" takes them from a copy downscaled to vae_stat_size px
    # (memory bounded by the tile everywhere), "tsdsr" is TSD-SR's own tiled VAE (utils/vaehook.py: its
    # grid, per-tile statistics averaged over the tiles, 32 groups), to reproduce its tiled outputs;
    # "auto": exact on CUDA, fast on CPU.
    vae_tile_stats: Literal["auto", "exact", "fast", "tsdsr"] = "auto"
    vae_stat_size: int = 512  # long side (pixels for the encoder, x8 for the decoder) of the fast stats pass
    clamp_input: bool = False  # TSD-SR clamps x*2-1 to [-1, 1]; SNUCV does not (the pipelines say it per call)

    def __post_init__(self) -> None:
        if self.latent not in ("sample", "mean"):
            raise ValueError(f"latent must be 'sample' or 'mean', got {self.latent!r}")
        if self.latent_tile <= 0 or not 0 <= self.latent_overlap < self.latent_tile:
            raise ValueError(f"need 0 <= latent_overlap < latent_tile, got {self.latent_overlap}, {self.latent_tile}")
        if self.vae_tiling not in (None, True, False, "auto"):
            raise ValueError(f"vae_tiling must be True, False or 'auto', got {self.vae_tiling!r}")
        if self.vae_tile_stats not in VAE_TILE_STATS:
            raise ValueError(f"vae_tile_stats must be one of {', '.join(VAE_TILE_STATS)}, got {self.vae_tile_stats!r}")
        for name in ("vae_encoder_tile", "vae_decoder_tile"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


def _load_embeddings(path: os.PathLike, what: str, ndim: int) -> torch.Tensor:
    tensor = load_object(path)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != ndim:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise CheckpointError(f"{path}: {what} must be a {ndim}-d tensor, got {shape}")
    return tensor


def _check_embeddings(prompt: torch.Tensor, pooled: torch.Tensor, tconfig, folder: ModelFolder) -> None:
    if prompt.shape[-1] != tconfig.joint_attention_dim:
        raise ValueError(f"{folder.prompt_embeds}: last dimension {prompt.shape[-1]} does not match the transformer's "
                         f"joint_attention_dim {tconfig.joint_attention_dim}")
    if pooled.shape[-1] != tconfig.pooled_projection_dim:
        raise ValueError(f"{folder.pool_embeds}: last dimension {pooled.shape[-1]} does not match the transformer's "
                         f"pooled_projection_dim {tconfig.pooled_projection_dim}")


class TSDSRRefiner(nn.Module):
    """TSD-SR one-step refiner. forward(x in [0,1], generator) -> refined image in [0,1], same size
    (sides that are not multiples of 8 are handled as SNUCV does: the VAE floors, the output is
    resized back bicubically)."""

    # diffusers models (an optional dependency): typed loosely.
    transformer: Any
    vae: Any
    prompt_embeds: torch.Tensor
    pooled_embeds: torch.Tensor

    def __init__(self, transformer: nn.Module, vae: nn.Module, prompt_embeds: torch.Tensor,
                 pooled_embeds: torch.Tensor, config: RefinerConfig | None = None):
        super().__init__()
        self.transformer = transformer
        self.vae = vae
        self.config = config or RefinerConfig()
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        self.register_buffer("pooled_embeds", pooled_embeds, persistent=False)
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, merge: bool = False,
                       config: RefinerConfig | None = None, folder: ModelFolder | None = None) -> TSDSRRefiner:
        """Load SD3 transformer + VAE (diffusers layout, local files only), LoRA and embeddings."""
        require("refiner", "the TSD-SR refiner")
        from diffusers import AutoencoderKL, SD3Transformer2DModel

        folder = folder or validate_model_folder(model_dir, need_upsampler=False)
        common = {"local_files_only": True, "torch_dtype": torch.float32}
        transformer = SD3Transformer2DModel.from_pretrained(folder.transformer_dir, variant=folder.transformer_variant,
                                                            **common)
        vae = AutoencoderKL.from_pretrained(folder.vae_dir, variant=folder.vae_variant, **common)
        attach_lora(transformer, read_lora_file(folder.transformer_lora), TRANSFORMER_TARGETS,
                    str(folder.transformer_lora))
        attach_lora(vae, read_lora_file(folder.vae_lora), VAE_TARGETS, str(folder.vae_lora))
        if merge:  # merge in fp32 before casting, so the fused weight is rounded once
            merge_lora(transformer)
            merge_lora(vae)
        prompt = _load_embeddings(folder.prompt_embeds, "prompt embeddings", 3)
        pooled = _load_embeddings(folder.pool_embeds, "pooled prompt embeddings", 2)
        _check_embeddings(prompt, pooled, transformer.config, folder)
        refiner = cls(transformer, vae, prompt, pooled, config)
        return refiner.to(device=device, dtype=dtype)

    def merge_lora(self) -> None:
        """Fold the LoRA adapters into the base weights (faster; same output within fp tolerance)."""
        merge_lora(self.transformer)
        merge_lora(self.vae)

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        return self.prompt_embeds.dtype

    @property
    def device(self) -> torch.device:
        return self.prompt_embeds.device

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ stages
    def vae_tiles(self, setting: bool | str | None, pixels: int) -> bool:
        """Whether a call on an image of `pixels` output pixels tiles the VAE: `setting` is this call's
        (True, False, "auto"), None for the config's (which, when None itself, is off)."""
        setting = self.config.vae_tiling if setting is None else setting
        if setting == "auto":
            return pixels > VAE_AUTO_TILE_PIXELS
        return bool(setting)

    def _encoder_moments(self, x: torch.Tensor, tiled: bool | str | None = None) -> torch.Tensor:
        def net(t: torch.Tensor) -> torch.Tensor:
            h = self.vae.encoder(t)
            return self.vae.quant_conv(h) if self.vae.quant_conv is not None else h

        cfg = self.config
        tiled = self.vae_tiles(tiled, x.shape[-2] * x.shape[-1])
        tile, halo, f = cfg.vae_encoder_tile, cfg.vae_encoder_halo, self.vae_factor
        if not tiled or not tsdsr_needs_tiles(x.shape[-2], x.shape[-1], tile, halo):
            return net(x)
        mode = self._tile_stats(x)
        if mode == "tsdsr":  # TSD-SR applies quant_conv after its tiled encoder
            h = run_vae_tiled_tsdsr(encoder_steps(self.vae.encoder), self.vae.encoder, x, tile, halo, 1.0 / f, f)
            return self.vae.quant_conv(h) if self.vae.quant_conv is not None else h
        tiles = VAETileConfig(tile=tile + 2 * halo, halo=halo, align=f, scale=1.0 / f, stat_size=cfg.vae_stat_size)
        if mode == "exact":
            return run_vae_tiled_exact(encoder_steps(self.vae.encoder, self.vae.quant_conv), self.vae.encoder, x, tiles)
        return run_vae_tiled(net, self.vae.encoder, x, tiles)

    def _tile_stats(self, x: torch.Tensor) -> str:
        mode = self.config.vae_tile_stats
        if mode == "auto":
            return "exact" if x.device.type == "cuda" else "fast"
        return mode

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, *, tiled: bool | str | None = None
               ) -> torch.Tensor:
        """x in [-1,1] (model dtype) -> scaled latent z (sample or mean per config)."""
        moments = self._encoder_moments(x, tiled)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        if self.config.latent == "mean":
            latent = mean
        else:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            if generator is None:
                generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
            # fp32 noise on the generator's own device (a generator only fills tensors on its device);
            # the same draw whatever the model dtype.
            noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=torch.float32)
            latent = mean + std * noise.to(device=mean.device, dtype=mean.dtype)
        return latent * self.scaling_factor

    def predict_v(self, z: torch.Tensor) -> torch.Tensor:
        """Transformer velocity at t=1000 with the fixed prompt, on Gaussian-blended latent tiles."""
        patch = int(self.transformer.config.patch_size)
        max_pos = self.transformer.config.pos_embed_max_size
        max_side = None if max_pos is None else int(max_pos) * patch

        def call(tile: torch.Tensor) -> torch.Tensor:
            b = tile.shape[0]
            h, w = tile.shape[-2:]
            ph, pw = (-h) % patch, (-w) % patch  # odd latent sides: SD3 patches need multiples of patch_size
            if ph or pw:
                tile = F.pad(tile, (0, pw, 0, ph), mode="replicate")
            v = self.transformer(
                hidden_states=tile,
                timestep=torch.full((b,), TIMESTEP, device=tile.device, dtype=tile.dtype),
                encoder_hidden_states=self.prompt_embeds.expand(b, -1, -1),
                pooled_projections=self.pooled_embeds.expand(b, -1),
                return_dict=False,
            )[0]
            return v[..., :h, :w]

        return run_latent_tiles(call, z, self.config.latent_tile, self.config.latent_overlap, max_side)

    def decode(self, z0: torch.Tensor, *, tiled: bool | str | None = None) -> torch.Tensor:
        """Scaled latent -> image in [-1, 1] (not clamped)."""
        latent = z0 / self.scaling_factor
        if self.vae.post_quant_conv is not None:
            latent = self.vae.post_quant_conv(latent)
        cfg = self.config
        tile, halo, f = cfg.vae_decoder_tile, cfg.vae_decoder_halo, self.vae_factor
        tiled = self.vae_tiles(tiled, latent.shape[-2] * latent.shape[-1] * f * f)
        if not tiled or not tsdsr_needs_tiles(latent.shape[-2], latent.shape[-1], tile, halo):
            return self.vae.decoder(latent)
        mode = self._tile_stats(latent)
        if mode == "tsdsr":
            return run_vae_tiled_tsdsr(decoder_steps(self.vae.decoder), self.vae.decoder, latent, tile, halo, float(f))
        tiles = VAETileConfig(tile=tile + 2 * halo, halo=halo, align=1, scale=float(f),
                              stat_size=max(1, cfg.vae_stat_size // f))
        if mode == "exact":
            return run_vae_tiled_exact(decoder_steps(self.vae.decoder), self.vae.decoder, latent, tiles)
        return run_vae_tiled(self.vae.decoder, self.vae.decoder, latent, tiles)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
                vae_tiling: bool | str | None = None, clamp_input: bool | None = None) -> torch.Tensor:
        """x (B,3,H,W) float in [0,1] -> refined (B,3,H,W) in [0,1], in x's dtype.

        Per call (None: the config's): vae_tiling True, False or "auto" (decided from x's size, once for the
        encoder and the decoder); clamp_input, whether x*2-1 is clamped to [-1, 1] (TSD-SR does, SNUCV does not).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"refiner input must be (B,3,H,W), got {tuple(x.shape)}")
        f = self.vae_factor
        if min(x.shape[-2:]) < f:
            raise ValueError(f"refiner input sides must be >= {f} px, got {tuple(x.shape[-2:])}")
        out_dtype = x.dtype if x.dtype.is_floating_point else torch.float32
        pixels = x.to(device=self.device, dtype=self.dtype) * 2 - 1
        if self.config.clamp_input if clamp_input is None else clamp_input:
            pixels = pixels.clamp(-1, 1)
        tiled = self.vae_tiles(vae_tiling, x.shape[-2] * x.shape[-1])
        z = self.encode(pixels, generator, tiled=tiled)
        z0 = z - self.predict_v(z)
        image = self.decode(z0, tiled=tiled).clamp(-1, 1) * 0.5 + 0.5
        if image.shape[-2:] != x.shape[-2:]:  # sides not multiples of 8: resize back, as SNUCV does
            image = F.interpolate(image, size=tuple(x.shape[-2:]), mode="bicubic", align_corners=False).clamp(0, 1)
        return image.to(out_dtype)
