"""Start weights for training: the bicubic linear path of sr4's bundled default model's recipe.

`model.init: bicubic_path` in a training config (configs/default_light.yaml) starts a pixelshuffledirect network
as MATLAB bicubic x4: the network at step 0 is bicubic (exact away from the image border) and the body learns
only the missing detail, instead of first having to learn to upscale at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

#: `model.init` values: the network's own random initialisation, or the bicubic linear path on top of it.
INITS = ("random", "bicubic_path")


def bicubic_phase_weights(scale: int = 4) -> np.ndarray:
    """(scale, 5): MATLAB bicubic weights of the LR offsets -2..2 for each HR sub-pixel phase."""
    from sr4.image.resize import contributions

    n, p = 32, 16  # an interior LR pixel, away from the mirrored border
    weights, indices = contributions(n, n * scale, float(scale))
    out = np.zeros((scale, 5))
    for i in range(scale):
        for w, j in zip(weights[p * scale + i], indices[p * scale + i]):
            out[i, j - p + 2] += w
    return out


def bicubic_path_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """`model`'s state_dict with its linear path set to MATLAB bicubic upscaling (the default
    model's start weights): conv_first copies each colour's 3x3 neighbourhood into 9 channels, the
    pixelshuffledirect conv's 3x3 over those reaches LR offsets -2..2 (the bicubic support) and
    computes each sub-pixel phase, and conv_after_body is zero, so the body's output is ignored
    at first: the network starts as bicubic (exact away from the image border) and learns the
    missing detail, instead of first having to learn to upscale at all.
    """
    scale, dim = int(model.upscale), int(model.embed_dim)
    if getattr(model, "upsampler", "") != "pixelshuffledirect" or dim < 27 or model.in_chans != 3:
        raise ValueError("the bicubic path needs an RGB pixelshuffledirect network with embed_dim >= 27")
    w1d = torch.from_numpy(bicubic_phase_weights(scale)).float()
    # LR offset o = shift of the conv_first channel + tap of the upsample conv, both in -1..1.
    split = {-2: (-1, -1), -1: (-1, 0), 0: (0, 0), 1: (1, 0), 2: (1, 1)}
    first = torch.zeros(dim, 3, 3, 3)
    up = torch.zeros(3 * scale * scale, dim, 3, 3)
    for c in range(3):
        for sy in range(3):
            for sx in range(3):
                first[c * 9 + sy * 3 + sx, c, sy, sx] = 1.0
        for i in range(scale):
            for j in range(scale):
                out_ch = c * scale * scale + i * scale + j  # PixelShuffle's channel order
                for oy, (ay, by) in split.items():
                    for ox, (ax, bx) in split.items():
                        up[out_ch, c * 9 + (ay + 1) * 3 + ax + 1, by + 1, bx + 1] = w1d[i, oy + 2] * w1d[j, ox + 2]
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["conv_first.weight"], sd["conv_first.bias"] = first, torch.zeros(dim)
    sd["upsample.0.weight"], sd["upsample.0.bias"] = up, torch.zeros(3 * scale * scale)
    for k in sd:
        if k.startswith("conv_after_body."):
            sd[k] = torch.zeros_like(sd[k])
    return sd


def apply_init(model: nn.Module, init: str) -> None:
    """Set `model`'s start weights as `init` (a `model.init` value) says, in place."""
    if init == "bicubic_path":
        model.load_state_dict(bicubic_path_state_dict(model))
    elif init != "random":
        raise ValueError(f"model.init must be one of {', '.join(INITS)}, got {init!r}")
