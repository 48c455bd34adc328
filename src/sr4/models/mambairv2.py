"""MambaIRv2 (classic SR) and MambaIRv2-Light as registered architectures.

Key names and constructor arguments are the official ones (csguoh/MambaIR, ``basicsr/archs/mambairv2_arch.py``
and ``mambairv2light_arch.py``), so the released checkpoints load unchanged. Every constructor argument except
``img_range`` (assumed 1.0, the released value) is read back from key shapes: see `infer_hyperparameters`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sr4.models.descriptor import ModelTiling, SizeRequirements, all_dtypes
from sr4.models.registry import KeyCondition, NetworkArchitecture

if TYPE_CHECKING:
    from torch import nn

    from sr4.models.registry import StateDict

_LAYER0 = "layers.0.residual_group.layers.0."
#: keys every MambaIRv2 checkpoint has, classic or light.
SIGNATURE_KEYS = ("conv_first.weight", _LAYER0 + "win_mhsa.relative_position_bias_table",
                  _LAYER0 + "assm.selectiveScan.A_logs")
#: the light variant's gated MLP (its LayerNorm inside the spatial gate).
LIGHT_KEY = _LAYER0 + "convffn1.sg.norm.weight"
_STAGE_KEY = re.compile(r"^layers\.(\d+)\.residual_group\.layers\.(\d+)\.")


def _stages(sd: StateDict) -> dict[int, int]:
    """Layer count of every residual group found in the keys."""
    stages: dict[int, int] = {}
    for k in sd:
        m = _STAGE_KEY.match(k)
        if m:
            s, j = int(m.group(1)), int(m.group(2))
            stages[s] = max(stages.get(s, 0), j + 1)
    return stages


def _has_stages(sd: StateDict) -> list[str]:
    return [] if _stages(sd) else ["residual groups"]


def _shape(sd: StateDict, key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def _ratio(hidden: int, dim: int) -> float:
    """mlp_ratio r with int(dim * r) == hidden (the constructor's rounding)."""
    r = hidden / dim
    while int(dim * r) < hidden:
        r = math.nextafter(r, math.inf)
    return r


def infer_hyperparameters(sd: StateDict) -> dict[str, Any]:
    """Every constructor argument except ``img_range`` (1.0), read from key shapes."""
    stages = _stages(sd)
    embed_dim, in_chans = _shape(sd, "conv_first.weight")[:2]
    n_stages = max(stages) + 1
    depths = [stages.get(i, 0) for i in range(n_stages)]
    if 0 in depths:
        raise ValueError(f"stage {depths.index(0)} has no layers")
    num_heads = [_shape(sd, f"layers.{i}.residual_group.layers.0.win_mhsa.relative_position_bias_table")[1]
                 for i in range(n_stages)]
    table_rows = _shape(sd, _LAYER0 + "win_mhsa.relative_position_bias_table")[0]  # (2 ws - 1)^2
    ws = (math.isqrt(table_rows) + 1) // 2
    hidden, d_state = _shape(sd, _LAYER0 + "assm.selectiveScan.A_logs")
    if LIGHT_KEY in sd:
        kernel = 5
    else:
        kernel = _shape(sd, _LAYER0 + "convffn1.dwconv.depthwise_conv.0.weight")[-1]
    kwargs: dict[str, Any] = dict(
        in_chans=in_chans,
        embed_dim=embed_dim,
        d_state=d_state,
        depths=depths,
        num_heads=num_heads,
        window_size=ws,
        inner_rank=_shape(sd, _LAYER0 + "embeddingA.weight")[0],
        num_tokens=_shape(sd, _LAYER0 + "assm.embeddingB.weight")[0],
        convffn_kernel_size=kernel,
        mlp_ratio=_ratio(hidden, embed_dim),
        qkv_bias=_LAYER0 + "wqkv.bias" in sd,
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
    return kwargs


def scale_of(kwargs: Mapping[str, Any]) -> int:
    """Output size factor of a configuration: the denoising/JPEG head ('') keeps the size."""
    return int(kwargs.get("upscale", 2)) if kwargs.get("upsampler", "") else 1


def min_size_of(kwargs: Mapping[str, Any]) -> int:
    """Half a window per side (flip padding at most doubles a side): the rule of `MambaIRv2Base.min_size`."""
    return (int(kwargs.get("window_size", 16)) + 1) // 2


def capabilities(module: Any) -> dict[str, Any]:
    """What a built MambaIRv2 states: its routing noise is drawn at inference (a generator makes it reproducible),
    inputs need half a window per side (flip padding doubles a side at most), activation memory per pixel."""
    scale = int(module.scale)
    return dict(
        scale=scale,
        size_requirements=SizeRequirements(minimum=int(module.min_size)),
        supported_dtypes=all_dtypes(),
        stochastic=True,
        noise_draws=module.noise_draws,
        memory_per_pixel=float(module.memory_per_pixel),
        purpose="SR" if scale > 1 else "Restoration",
        tiling=ModelTiling.SUPPORTED,
        input_channels=int(module.in_chans),
        output_channels=int(module.in_chans),
        label=f"the model {type(module).__name__}",
    )


def _classic() -> type[nn.Module]:
    from sr4.networks.mambairv2 import MambaIRv2

    return MambaIRv2


def _light() -> type[nn.Module]:
    from sr4.networks.mambairv2_light import MambaIRv2Light

    return MambaIRv2Light


MAMBAIRV2 = NetworkArchitecture(
    id="MambaIRv2", name="MambaIRv2 (classic SR)", module_class=_classic,
    keys=KeyCondition(required=SIGNATURE_KEYS, excluded=(LIGHT_KEY,)), check_keys=_has_stages,
    infer=infer_hyperparameters, capabilities=capabilities, scale_of=scale_of, min_size_of=min_size_of)
MAMBAIRV2_LIGHT = NetworkArchitecture(
    id="MambaIRv2Light", name="MambaIRv2-Light", module_class=_light,
    keys=KeyCondition(required=(*SIGNATURE_KEYS, LIGHT_KEY)), check_keys=_has_stages,
    infer=infer_hyperparameters, capabilities=capabilities, scale_of=scale_of, min_size_of=min_size_of)
