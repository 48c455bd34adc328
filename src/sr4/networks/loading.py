"""Detecting MambaIRv2 architectures from key shapes and building the network (files are read by
`sr4.checkpoints.read_state_dict`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sr4.checkpoints import read_state_dict
from sr4.errors import CheckpointError

ARCHS = ("MambaIRv2", "MambaIRv2Light")
_SIGNATURE_KEYS = ("conv_first.weight", "layers.0.residual_group.layers.0.win_mhsa.relative_position_bias_table",
                   "layers.0.residual_group.layers.0.assm.selectiveScan.A_logs")


@dataclass
class UpsamplerConfig:
    """Architecture name (``MambaIRv2`` or ``MambaIRv2Light``) and its constructor arguments."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> int:
        return int(self.kwargs.get("upscale", 1)) if self.kwargs.get("upsampler", "") else 1

    def build(self) -> nn.Module:
        if self.arch == "MambaIRv2":
            from sr4.networks.mambairv2 import MambaIRv2 as cls
        elif self.arch == "MambaIRv2Light":
            from sr4.networks.mambairv2_light import MambaIRv2Light as cls
        else:
            raise ValueError(f"unknown upsampler architecture {self.arch!r}; expected one of {ARCHS}")
        return cls(**self.kwargs)


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
    try:
        with torch.device("meta"):
            model = config.build()
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{name}: cannot build {config.arch}({config.kwargs}): {exc}") from exc
    report = _mismatch_report(model, sd)
    if report:
        raise CheckpointError(f"{name}: checkpoint does not match {config.arch}({config.kwargs}): {report}")
    broken = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"{name}: {len(broken)} of {len(sd)} tensors hold NaN or infinite values (first: "
                              f"{broken[0]}); the file is damaged or comes from a diverged training run")
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def load_upsampler(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   key: str | None = None) -> nn.Module:
    """Read a MambaIRv2 / MambaIRv2-Light checkpoint and return the network in eval mode on ``device``.

    ``dtype`` None means float32 (whatever precision the file stores); ``key`` as in :func:`read_state_dict`.
    """
    path = Path(path)
    sd = read_state_dict(path, key=key)
    config = detect_upsampler(sd, name=str(path))
    model = build_and_load(config, sd, name=str(path))
    return model.to(device=device, dtype=dtype or torch.float32).eval()
