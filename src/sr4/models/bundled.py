"""sr4's bundled default upsampler: a small MambaIRv2-Light x4 shipped inside the package.

It is what `sr4.Upscaler()` and `sr4 upscale` use when no model is named, so a fresh install gives
a learned x4 result on a CPU without downloading anything. The file lives in `sr4/weights/`
(package data) in the official MambaIRv2 key layout, so `load_upsampler` reads it like any release
checkpoint; its sha256 is checked on every load so a damaged install fails loudly instead of
producing bad images.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sr4.errors import CheckpointError
from sr4.models.descriptor import ModelDescriptor
from sr4.models.registry import load_file

if TYPE_CHECKING:  # imported where used, so `sr4 info` can describe the bundled model without torch
    import torch
    from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class BundledModel:
    """Identity and provenance of a weights file shipped with sr4."""

    name: str
    filename: str
    sha256: str
    architecture: str
    recipe: str  # how it was trained (configs/default_light.yaml has the exact commands)
    evaluation: str  # held-out result, as printed by benchmarks/bench_default_model.py

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.filename

    def describe(self) -> dict[str, str]:
        """Plain fields for `sr4 info` / reports (path resolved in this install)."""
        return {"name": self.name, "file": str(self.path), "sha256": self.sha256,
                "architecture": self.architecture, "recipe": self.recipe, "evaluation": self.evaluation}


DEFAULT_MODEL = BundledModel(
    name="sr4-default-light-x4",
    filename="sr4_default_light_x4.safetensors",
    sha256="6800b35c2cb86d05c331a9b74d178d2d9b095befc3c18c337f909f1dacbf560c",
    architecture="MambaIRv2-Light x4: embed_dim 32, depths [3, 3], heads [2, 2], window 8, d_state 8, "
                 "inner_rank 32, num_tokens 64, mlp_ratio 1, pixelshuffledirect",
    recipe="trained by sr4 (sr4 train configs/default_light.yaml, upsampler mode, L1 loss, EMA weights) "
           "in two runs, 5400 then 12000 steps of batch 4 x 48x48 LR patches, on 35 CC/GPL/LGPL photographs "
           "from Debian wallpaper packages (LR = MATLAB bicubic x1/4), starting from a bicubic linear path; "
           "no pretrained weights; about 2.5 hours on one CPU core",
    evaluation="6 held-out photos (x4, MATLAB bicubic LR; Y PSNR/SSIM, shave 4): 35.42 dB / 0.9028, "
               "+1.30 dB over bicubic (34.13 dB), +1.02 dB over Lanczos; NIQE 7.55 (bicubic 8.23); "
               "about 2.4 CPU-seconds per output megapixel on one core",
)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_weights_path(verify: bool = True) -> Path:
    """Path of the bundled weights; with `verify`, raise CheckpointError unless the file is the
    one this release was built with (missing, truncated or replaced files are all caught)."""
    model = DEFAULT_MODEL
    path = model.path
    if not path.is_file():
        raise CheckpointError(f"{path}: sr4's bundled default weights are missing from this install "
                              "(reinstall sr4, or pass a checkpoint with model=... / --model FILE)")
    if verify:
        found = sha256_of(path)
        if found != model.sha256:
            raise CheckpointError(f"{path}: bundled default weights are damaged or replaced "
                                  f"(sha256 {found}, expected {model.sha256}); reinstall sr4")
    return path


def load_default() -> ModelDescriptor:
    """The bundled default upsampler, checked (sha256) and loaded on the CPU in float32, in eval mode."""
    descriptor = load_file(default_weights_path(verify=True))
    descriptor.model.float().eval()
    return dataclasses.replace(descriptor, label=f"sr4's bundled model {DEFAULT_MODEL.name}")


def load_default_upsampler(device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """The bundled default upsampler's network, checked and loaded in eval mode on `device`."""
    import torch

    return load_default().to(device=device, dtype=dtype or torch.float32).model
