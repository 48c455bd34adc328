"""Training checkpoints: weights for inference + a separate resumable training state.

    EXP/checkpoints/step_00001000/model.safetensors      U's state_dict, official MambaIRv2 keys
    EXP/checkpoints/step_00001000/model_ema.safetensors  EMA of U (same keys), when enabled
    EXP/checkpoints/step_00001000/training_state.pt      step, optimiser, scheduler, RNG (weights_only)
    EXP/checkpoints/latest                               name of the newest complete checkpoint

Every file is written through sr4.utils.atomic and `latest` is replaced last, so a kill at any
moment leaves `latest` naming a complete checkpoint (the previous one if the new one is partial).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from sr4.checkpoints import load_object, read_state_dict
from sr4.errors import CheckpointError
from sr4.utils.atomic import atomic_path, atomic_write_text

log = logging.getLogger("sr4.train")

WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "model_ema.safetensors"
STATE = "training_state.pt"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP's `module.` prefix; contiguous CPU copies (safetensors refuses shared storage)."""
    out = {}
    for k, v in state.items():
        if k.startswith("module."):
            k = k[len("module."):]
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file(clean_state_dict(state), str(tmp), metadata=metadata or {"format": "pt"})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path)


def save_checkpoint(exp_dir: Path, step: int, weights: dict[str, torch.Tensor], state: dict,
                    ema: dict[str, torch.Tensor] | None = None, keep: int = 3,
                    meta: dict[str, str] | None = None) -> Path:
    root = Path(exp_dir) / "checkpoints"
    ckpt = root / f"step_{step:08d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "step": str(step), **(meta or {})}
    save_weights(ckpt / WEIGHTS, weights, metadata)
    if ema is not None:
        save_weights(ckpt / EMA_WEIGHTS, ema, {**metadata, "ema": "true"})
    with atomic_path(ckpt / STATE) as tmp:
        torch.save(state, tmp)
    atomic_write_text(root / LATEST, ckpt.name + "\n")  # last: the checkpoint is complete now
    _prune(root, keep, ckpt.name)
    return ckpt


def _prune(root: Path, keep: int, current: str) -> None:
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir())
    for _, path in steps[:-keep] if keep > 0 else []:
        if path.name != current:
            shutil.rmtree(path, ignore_errors=True)


def find_checkpoint(path: str | Path) -> Path | None:
    """Resolve an experiment folder, its checkpoints/ folder or a step folder to a complete
    checkpoint folder; None when an experiment has none yet."""
    path = Path(path)
    if (path / STATE).is_file():
        return path
    for root in (path / "checkpoints", path):
        pointer = root / LATEST
        if pointer.is_file():
            ckpt = root / pointer.read_text(encoding="utf-8").strip()
            if not (ckpt / STATE).is_file() or not (ckpt / WEIGHTS).is_file():
                raise CheckpointError(f"{pointer} names {ckpt.name}, which is incomplete or missing")
            return ckpt
    if path.is_dir() and _STEP_DIR.match(path.name):
        raise CheckpointError(f"{path}: not a complete checkpoint (no {STATE})")
    return None


def load_checkpoint(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict]:
    """(weights, ema weights or None, training state)."""
    weights = load_weights(ckpt / WEIGHTS)
    ema = load_weights(ckpt / EMA_WEIGHTS) if (ckpt / EMA_WEIGHTS).is_file() else None
    state = load_object(ckpt / STATE)
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{ckpt / STATE}: not a training state (no 'step')")
    return weights, ema, state
