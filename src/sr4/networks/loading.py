"""Reading MambaIRv2 checkpoints, detecting their architecture from key shapes, building the network.

Formats: ``.safetensors`` and PyTorch pickles (``.pth``/``.pt``/anything ``torch.save`` wrote), the latter
only through ``torch.load(weights_only=True)`` so that a checkpoint can never run code. The format is
recognised from the file's first bytes, not its extension.

Wrappers: BasicSR stores ``{'params': sd}``, and with EMA training ``{'params': sd, 'params_ema': sd_ema}``.
The MambaIRv2 releases and SNUCV's ``mamba_trained.pth`` contain only ``params``. MambaIR's own test configs
load ``params`` (BasicSR's default ``param_key``), but BasicSR validates and publishes with the EMA network
when one exists, so when both are present we take ``params_ema`` (as Real-ESRGAN's inference does); pass
``key="params"`` to override. Other wrappers unwrapped: ``state_dict``, ``model``, ``net``. A ``module.``
prefix (DataParallel/DDP) is stripped.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are made, so `sr4 info` on the bundled model stays torch-free
    import torch
    import torch.nn as nn

ARCHS = ("MambaIRv2", "MambaIRv2Light")
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net")
_SIGNATURE_KEYS = ("conv_first.weight", "layers.0.residual_group.layers.0.win_mhsa.relative_position_bias_table",
                   "layers.0.residual_group.layers.0.assm.selectiveScan.A_logs")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is not a MambaIRv2 one, or does not fit the network."""


@dataclass
class UpsamplerConfig:
    """Architecture name (``MambaIRv2`` or ``MambaIRv2Light``) and its constructor arguments."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> int:
        return int(self.kwargs.get("upscale", 1)) if self.kwargs.get("upsampler", "") else 1

    @property
    def min_size(self) -> int:
        """Smallest input side the network accepts: flip padding at most doubles a side, so each side must
        cover half a window (the rule of `MambaIRv2Base.min_size`; tests compare the two)."""
        return (int(self.kwargs.get("window_size", 16)) + 1) // 2

    def build(self) -> nn.Module:
        if self.arch == "MambaIRv2":
            from sr4.networks.mambairv2 import MambaIRv2 as cls
        elif self.arch == "MambaIRv2Light":
            from sr4.networks.mambairv2_light import MambaIRv2Light as cls
        else:
            raise ValueError(f"unknown upsampler architecture {self.arch!r}; expected one of {ARCHS}")
        return cls(**self.kwargs)


# ----------------------------------------------------------------------------- reading


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    raise CheckpointError(f"{path}: not a safetensors file nor a PyTorch checkpoint (unrecognised header {head[:8]!r})")


def _load_raw(path: Path) -> Any:
    kind = _sniff(path)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from exc
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: the pickle contains objects other than tensors and plain containers "
            f"(loaded with weights_only=True; convert it to .safetensors if you trust it). Detail: {exc}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Return the bare state_dict of a checkpoint (tensors on CPU, wrappers and ``module.`` removed).

    ``key`` picks a wrapper entry explicitly (e.g. ``"params"``); by default the first of
    ``params_ema, params, state_dict, model, net`` that holds tensors is used.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    obj = _load_raw(path)
    key_used = key is None
    for _ in range(3):  # wrappers may nest, e.g. {'state_dict': {'params': ...}}
        if _is_state_dict(obj) or not isinstance(obj, dict):
            break
        if not key_used and isinstance(obj.get(key), dict):
            obj, key_used = obj[key], True
            continue
        found = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if found is None:
            break
        obj = obj[found]
    if not key_used:
        raise CheckpointError(f"{path}: no state_dict under key {key!r}")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


# ----------------------------------------------------------------------------- detection


def _shape(sd: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def _ratio(hidden: int, dim: int) -> float:
    """mlp_ratio r with int(dim * r) == hidden (the constructor's rounding)."""
    r = hidden / dim
    while int(dim * r) < hidden:
        r = math.nextafter(r, math.inf)
    return r


def detect_upsampler(state_dict: dict[str, torch.Tensor], name: str = "checkpoint") -> UpsamplerConfig:
    """Read the architecture and every constructor argument except ``img_range`` (1.0) from key shapes."""
    sd = state_dict
    missing = [k for k in _SIGNATURE_KEYS if k not in sd]
    stage_key = re.compile(r"^layers\.(\d+)\.residual_group\.layers\.(\d+)\.")
    stages: dict[int, int] = {}
    for k in sd:
        m = stage_key.match(k)
        if m:
            s, j = int(m.group(1)), int(m.group(2))
            stages[s] = max(stages.get(s, 0), j + 1)
    if missing or not stages:
        hint = ", ".join(list(sd)[:5])
        raise CheckpointError(
            f"{name}: not a MambaIRv2 checkpoint (no {', '.join(missing) or 'residual groups'}; "
            f"its first keys are: {hint})"
        )
    try:
        return _detect(sd, stages)
    except (KeyError, IndexError, ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{name}: incomplete or inconsistent MambaIRv2 checkpoint ({exc!r})") from exc


def _detect(sd: dict[str, torch.Tensor], stages: dict[int, int]) -> UpsamplerConfig:
    embed_dim, in_chans = _shape(sd, "conv_first.weight")[:2]
    n_stages = max(stages) + 1
    depths = [stages.get(i, 0) for i in range(n_stages)]
    if 0 in depths:
        raise ValueError(f"stage {depths.index(0)} has no layers")
    layer0 = "layers.0.residual_group.layers.0."
    num_heads = [_shape(sd, f"layers.{i}.residual_group.layers.0.win_mhsa.relative_position_bias_table")[1]
                 for i in range(n_stages)]
    table_rows = _shape(sd, layer0 + "win_mhsa.relative_position_bias_table")[0]  # (2 ws - 1)^2
    ws = (math.isqrt(table_rows) + 1) // 2
    hidden, d_state = _shape(sd, layer0 + "assm.selectiveScan.A_logs")
    light = layer0 + "convffn1.sg.norm.weight" in sd
    if light:
        kernel = 5
    else:
        kernel = _shape(sd, layer0 + "convffn1.dwconv.depthwise_conv.0.weight")[-1]
    kwargs: dict[str, Any] = dict(
        in_chans=in_chans,
        embed_dim=embed_dim,
        d_state=d_state,
        depths=depths,
        num_heads=num_heads,
        window_size=ws,
        inner_rank=_shape(sd, layer0 + "embeddingA.weight")[0],
        num_tokens=_shape(sd, layer0 + "assm.embeddingB.weight")[0],
        convffn_kernel_size=kernel,
        mlp_ratio=_ratio(hidden, embed_dim),
        qkv_bias=layer0 + "wqkv.bias" in sd,
        patch_norm="patch_embed.norm.weight" in sd,
        img_range=1.0,
    )
    if "absolute_pos_embed" in sd:
        kwargs["ape"] = True
        kwargs["img_size"] = math.isqrt(_shape(sd, "absolute_pos_embed")[1])
    else:
        kwargs["img_size"] = 64
    kwargs["resi_connection"] = "3conv" if "conv_after_body.0.weight" in sd else "1conv"

    if "conv_up1.weight" in sd:
        upsampler, upscale = "nearest+conv", 4
    elif "conv_before_upsample.0.weight" in sd:
        upsampler = "pixelshuffle"
        convs = sorted(int(m.group(1)) for k in sd if (m := re.match(r"^upsample\.(\d+)\.weight$", k)))
        num_feat = _shape(sd, "conv_before_upsample.0.weight")[0]
        if len(convs) == 1 and _shape(sd, f"upsample.{convs[0]}.weight")[0] == 9 * num_feat:
            upscale = 3
        else:
            upscale = 2 ** len(convs)
    elif "upsample.0.weight" in sd:
        upsampler = "pixelshuffledirect"
        upscale = math.isqrt(_shape(sd, "upsample.0.weight")[0] // in_chans)
    else:
        upsampler, upscale = "", 1
    kwargs["upsampler"] = upsampler
    kwargs["upscale"] = upscale
    return UpsamplerConfig("MambaIRv2Light" if light else "MambaIRv2", kwargs)


# ----------------------------------------------------------------------------- building


def _mismatch_report(model: nn.Module, sd: dict[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(v.shape)}"
              for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape differences", shapes)):
        if items:
            shown = "; ".join(items[:8]) + (f"; ... ({len(items) - 8} more)" if len(items) > 8 else "")
            parts.append(f"{label} ({len(items)}): {shown}")
    return " | ".join(parts)


def build_and_load(config: UpsamplerConfig, sd: dict[str, torch.Tensor], name: str = "checkpoint") -> nn.Module:
    """Build ``config`` and load ``sd`` strictly; any mismatch raises :class:`CheckpointError`."""
    # Built on the CPU, not under torch.device("meta"): meta tensor ops run through torch's Python references,
    # whose first call imports torch._dynamo (1-3 s on a 2-core CPU, more than building the largest MambaIRv2).
    # The random initial values are then replaced by the checkpoint's tensors (assign=True, no copy).
    try:
        model = config.build()
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{name}: cannot build {config.arch}({config.kwargs}): {exc}") from exc
    report = _mismatch_report(model, sd)
    if report:
        raise CheckpointError(f"{name}: checkpoint does not match {config.arch}({config.kwargs}): {report}")
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def load_upsampler(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   key: str | None = None) -> nn.Module:
    """Read a MambaIRv2 / MambaIRv2-Light checkpoint and return the network in eval mode on ``device``.

    ``dtype`` None means float32 (whatever precision the file stores); ``key`` as in :func:`read_state_dict`.
    """
    import torch

    path = Path(path)
    sd = read_state_dict(path, key=key)
    config = detect_upsampler(sd, name=str(path))
    model = build_and_load(config, sd, name=str(path))
    return model.to(device=device, dtype=dtype or torch.float32).eval()
