"""Validation of a TSD-SR / SNUCV model folder (SNUCV's model_zoo/team04_SNUCV layout; docs/method.md, "Model
folder") before anything heavy is loaded.

Every missing file is reported in one error, with what the file is, so a user fixing a half-copied
download sees the whole list at once instead of one failure per run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sr4.errors import ModelFolderError

# Weight files diffusers accepts for a component, in the order we prefer them.
_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors.index.json",
)

_FILES = {
    "transformer.safetensors": "TSD-SR LoRA weights for the SD3 transformer",
    "vae.safetensors": "TSD-SR LoRA weights for the VAE encoder",
    "prompt_embeds.pt": "precomputed SD3 prompt embeddings (1, 333, 4096)",
    "pool_embeds.pt": "precomputed SD3 pooled prompt embeddings (1, 2048)",
}
_UPSAMPLER = ("mamba_trained.pth", "MambaIRv2-B x4 upsampler checkpoint (SNUCV's fine-tuned stage U)")
_COMPONENTS = {
    "transformer": "SD3-medium transformer (diffusers layout)",
    "vae": "SD3-medium VAE (diffusers layout)",
}


@dataclass(frozen=True)
class ModelFolder:
    root: Path
    transformer_dir: Path
    vae_dir: Path
    transformer_variant: str | None  # "fp16" when only the .fp16 weights are present
    vae_variant: str | None
    transformer_lora: Path
    vae_lora: Path
    prompt_embeds: Path
    pool_embeds: Path
    upsampler: Path | None


def _component_variant(folder: Path) -> tuple[str | None, str | None]:
    """(variant, problem): which weight file diffusers should read, or what is missing."""
    present = [name for name in _WEIGHT_NAMES if (folder / name).is_file()]
    if not present:
        return None, "diffusion_pytorch_model.safetensors (or .fp16.safetensors)"
    return ("fp16" if ".fp16." in present[0] else None), None


def validate_model_folder(model_dir: str | os.PathLike, *, need_upsampler: bool = True) -> ModelFolder:
    """Check the folder holds every file the refiner (and, if asked, the SNUCV upsampler) needs."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelFolderError(f"model folder {str(root)!r} does not exist or is not a directory")
    missing: list[str] = []
    variants: dict[str, str | None] = {}
    for comp, what in _COMPONENTS.items():
        sub = root / comp
        if not (sub / "config.json").is_file():
            missing.append(f"{comp}/config.json ({what}: model config)")
        variant, problem = _component_variant(sub)
        if problem:
            missing.append(f"{comp}/{problem} ({what}: weights)")
        variants[comp] = variant
    for name, what in _FILES.items():
        if not (root / name).is_file():
            missing.append(f"{name} ({what})")
    if need_upsampler and not (root / _UPSAMPLER[0]).is_file():
        missing.append(f"{_UPSAMPLER[0]} ({_UPSAMPLER[1]})")
    if missing:
        lines = "\n  - ".join(missing)
        raise ModelFolderError(
            f"model folder {str(root)!r} is incomplete; missing {len(missing)} file(s):\n  - {lines}\n"
            "Expected layout (SNUCV model_zoo/team04_SNUCV): transformer/ and vae/ (config.json + "
            "diffusion_pytorch_model[.fp16].safetensors), transformer.safetensors, vae.safetensors, "
            "prompt_embeds.pt, pool_embeds.pt" + (", mamba_trained.pth" if need_upsampler else "")
        )
    return ModelFolder(
        root=root,
        transformer_dir=root / "transformer",
        vae_dir=root / "vae",
        transformer_variant=variants["transformer"],
        vae_variant=variants["vae"],
        transformer_lora=root / "transformer.safetensors",
        vae_lora=root / "vae.safetensors",
        prompt_embeds=root / "prompt_embeds.pt",
        pool_embeds=root / "pool_embeds.pt",
        upsampler=(root / _UPSAMPLER[0]) if need_upsampler else None,
    )
