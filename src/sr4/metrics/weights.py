"""Where the learned metrics' weight files are looked for, and how they are read.

Nothing is ever downloaded. The default root is torch's hub directory, where pyiqa and
torchvision cache their downloads: ``$TORCH_HOME/hub`` (TORCH_HOME defaults to ~/.cache/torch),
with pyiqa's files in ``pyiqa/``, torchvision's in ``checkpoints/`` and OpenAI CLIP's in ``clip/``.
``--weights-dir DIR`` replaces that root; a file is also accepted directly in ``DIR``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sr4.errors import CheckpointError, WeightsError


@dataclass(frozen=True)
class WeightFile:
    name: str  # file name, as pyiqa / torchvision / CLIP name it
    subdir: str  # folder under the root where the original tool caches it
    purpose: str
    note: str = ""  # when it is not needed, or where else it may live

    def candidates(self, root: Path) -> list[Path]:
        return [root / self.subdir / self.name, root / self.name]

    def find(self, root: Path) -> Path | None:
        for p in self.candidates(root):
            if p.is_file():
                return p
        return None


def default_root() -> Path:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "torch"
    )
    return Path(torch_home) / "hub"


def resolve_root(weights_dir: str | os.PathLike | None) -> Path:
    return Path(weights_dir).expanduser() if weights_dir else default_root()


# pyiqa v0.1.13 file names (pyiqa/archs/*_arch.py default_model_urls) and torchvision's.
LPIPS_ALEX = WeightFile("LPIPS_v0.1_alex-df73285e.pth", "pyiqa", "LPIPS v0.1 linear heads (pyiqa)")
ALEXNET = WeightFile(
    "alexnet-owt-7be5be79.pth", "checkpoints", "AlexNet ImageNet backbone (torchvision)",
    "not needed when the LPIPS file already holds net.* keys",
)
DISTS_W = WeightFile("DISTS_weights-f5e65c96.pth", "pyiqa", "DISTS alpha/beta (pyiqa)")
VGG16 = WeightFile(
    "vgg16-397923af.pth", "checkpoints", "VGG16 ImageNet backbone (torchvision)",
    "not needed when the DISTS file already holds stage*.* keys",
)
CLIP_RN50 = WeightFile("RN50.pt", "clip", "OpenAI CLIP RN50 (CLIP-IQA)")
MUSIQ_KONIQ = WeightFile("musiq_koniq_ckpt-e95806b9.pth", "pyiqa", "MUSIQ KonIQ checkpoint (pyiqa)")
MANIQA_KONIQ = WeightFile("ckpt_koniq10k.pt", "pyiqa", "MANIQA KonIQ checkpoint (pyiqa)")

METRIC_FILES: dict[str, tuple[WeightFile, ...]] = {
    "lpips": (LPIPS_ALEX, ALEXNET),
    "dists": (DISTS_W, VGG16),
    "clipiqa": (CLIP_RN50,),
    "maniqa": (MANIQA_KONIQ,),
    "musiq": (MUSIQ_KONIQ,),
}
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A metric's weight file through `sr4.checkpoints.read_state_dict` (no pickled code), unwrapping pyiqa's and
    torchvision's nesting; any problem is a `WeightsError` naming the file."""
    from sr4.checkpoints import read_state_dict as read

    try:
        return read(path, wrappers=("params", "state_dict", "model"))
    except CheckpointError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise WeightsError(f"{path}: cannot read weights ({reason})") from None


def assign(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: Path, filled: set[str]) -> None:
    """Copy matching entries into ``module``'s state (shape-checked), recording which keys were set."""
    own = module.state_dict()
    for key, value in tensors.items():
        if key not in own:
            continue
        if tuple(own[key].shape) != tuple(value.shape):
            raise WeightsError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
        own[key].copy_(value.to(own[key].dtype))
        filled.add(key)


def require_filled(module: torch.nn.Module, filled: set[str], what: str) -> None:
    missing = [k for k in module.state_dict() if k not in filled and not k.endswith(_DERIVED_BUFFERS)]
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        raise WeightsError(f"{what}: {len(missing)} tensors not found in the weight files: {shown}")


# Constant buffers rebuilt by the modules themselves (normalisation constants, pooling filters).
_DERIVED_BUFFERS = (".shift", ".scale", "mean", "std", ".filter")
