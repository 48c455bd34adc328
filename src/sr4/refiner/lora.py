"""TSD-SR LoRA files: read, check against the adapted modules, load through peft, optionally merge.

File format (TSD-SR `transformer.safetensors` / `vae.safetensors`): one tensor per peft parameter,
keyed `"transformer." + <peft parameter name without the adapter segment ".default">` -- the
prefix is "transformer." for the VAE file too. Loading is strict in both directions: a key that
lands nowhere, or an adapted module left without weights, is an error listing the names, because
a silently half-applied LoRA produces plausible but wrong images.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from sr4.checkpoints import load_object
from sr4.errors import CheckpointError, LoraError

# TSD-SR's peft targets for the transformer (Microtreei/TSD-SR, test/test_tsdsr.py; docs/method.md, "Stage M"):
# a suffix match, so "proj" also hits pos_embed.proj and ff.*.proj.
TRANSFORMER_TARGETS: tuple[str, ...] = (
    "to_k", "to_q", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "proj", "linear", "proj_out",
)


def _vae_targets() -> tuple[str, ...]:
    names = ["encoder.conv_in"]
    for block in range(4):
        for res in range(2):
            names += [f"encoder.down_blocks.{block}.resnets.{res}.conv{c}" for c in (1, 2)]
            if res == 0 and block in (1, 2):  # channel changes 128->256, 256->512 need a 1x1 shortcut
                names.append(f"encoder.down_blocks.{block}.resnets.0.conv_shortcut")
        if block < 3:
            names.append(f"encoder.down_blocks.{block}.downsamplers.0.conv")
    names += [f"encoder.mid_block.attentions.0.{n}" for n in ("to_q", "to_k", "to_v", "to_out.0")]
    names += [f"encoder.mid_block.resnets.{r}.conv{c}" for r in range(2) for c in (1, 2)]
    names += ["encoder.conv_out", "quant_conv"]  # SD3's VAE has no quant_conv: 31 of these 32 match
    return tuple(names)


VAE_TARGETS: tuple[str, ...] = _vae_targets()
KEY_PREFIX = "transformer."
ADAPTER = "default"
_MAX_LISTED = 40


def _listing(names: list[str]) -> str:
    shown = "\n    ".join(names[:_MAX_LISTED])
    more = f"\n    ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return f"\n    {shown}{more}"


def read_lora_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a TSD-SR LoRA file (on CPU), read by `sr4.checkpoints.load_object`."""
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"{path}: LoRA file not found")
    try:
        state = load_object(path)
    except CheckpointError as exc:
        raise LoraError(str(exc)) from None
    if not isinstance(state, dict) or not state:
        raise LoraError(f"{path}: LoRA file holds no tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def detect_rank(state: dict[str, torch.Tensor], source: str) -> int:
    """The LoRA rank, read from the lora_A shapes; every module must share it (as TSD-SR trains it)."""
    ranks: dict[int, list[str]] = {}
    for key, tensor in state.items():
        if ".lora_A." in key:
            ranks.setdefault(int(tensor.shape[0]), []).append(key)
    if not ranks:
        raise LoraError(f"{source}: no lora_A weights found; keys look like{_listing(sorted(state))}")
    if len(ranks) > 1:
        summary = ", ".join(f"rank {r}: {len(k)} modules (e.g. {k[0]})" for r, k in sorted(ranks.items()))
        raise LoraError(f"{source}: LoRA ranks differ between modules ({summary}); one rank per file is expected")
    return next(iter(ranks))


def file_key(param_name: str, adapter: str = ADAPTER) -> str | None:
    """The LoRA-file key for a peft parameter name, or None if it is not a LoRA parameter of `adapter`."""
    marker = f".{adapter}."
    if (".lora_A." not in param_name and ".lora_B." not in param_name) or marker not in param_name:
        return None
    return KEY_PREFIX + param_name.replace(marker, ".", 1)


def attach_lora(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    targets: tuple[str, ...],
    source: str,
    *,
    alpha: int | None = None,
) -> int:
    """Add a peft LoRA adapter on `targets` and fill it from `state` (strict). Returns the rank.

    alpha defaults to the rank (TSD-SR sets lora_alpha = r), so the LoRA scale is 1.
    """
    from peft import LoraConfig, inject_adapter_in_model

    rank = detect_rank(state, source)
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, init_lora_weights=False,
                        target_modules=list(targets))
    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError as exc:  # peft: none of the target modules exists in this model
        raise LoraError(f"{source}: cannot attach LoRA to {type(model).__name__}: {exc}") from exc

    remaining = dict(state)
    unfilled: list[str] = []
    mismatched: list[str] = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = file_key(name)
            if key is None:
                continue
            tensor = remaining.pop(key, None)
            if tensor is None:
                unfilled.append(key)
            elif tuple(tensor.shape) != tuple(param.shape):
                mismatched.append(f"{key}: file {tuple(tensor.shape)} vs model {tuple(param.shape)}")
            else:
                param.copy_(tensor.to(param.dtype))
    problems = []
    if unfilled:
        problems.append(f"{len(unfilled)} adapted parameter(s) have no weight in the file:{_listing(sorted(unfilled))}")
    if remaining:
        problems.append(f"{len(remaining)} key(s) of the file match no adapted module:{_listing(sorted(remaining))}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es):{_listing(mismatched)}")
    if problems:
        raise LoraError(f"{source}: LoRA weights do not fit {type(model).__name__}:\n  " + "\n  ".join(problems))
    return rank


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight (W + scale * B@A); returns how many layers merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    count = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and not module.merged:
            module.merge()
            count += 1
    return count
