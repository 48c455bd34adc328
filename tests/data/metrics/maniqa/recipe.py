"""Deterministic small MANIQA weights, shared by the sr4 test and the pyiqa reference script.

No RNG: every value comes from a splitmix64 hash of (tensor name, element index), so the same
tensors appear under any torch/numpy version. Scales keep activations O(1) and the scores away
from the ReLU floor so a relative comparison is meaningful.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

# Small configurations: (pyiqa MANIQA keywords, timm VisionTransformer keywords). Real size: embed_dim
# 768, patch 8, window 4, dim_mlp 768, num_heads [4, 4]; ViT 12 blocks, 12 heads, MLP 3072.
# "p16" (16 px patches: a 14x14 token grid, windows of 7) keeps the fast tests fast; "p8" has the
# real 28x28 grid and windows of 4.
CONFIGS = {
    "p16": (dict(embed_dim=16, patch_size=16, depths=[2, 2], num_heads=[4, 2], window_size=7, dim_mlp=24,
                 num_tab=2, scale=0.8),
            dict(embed_dim=16, patch_size=16, depth=12, num_heads=2, mlp_ratio=2.0, num_classes=10)),
    "p8": (dict(embed_dim=16, patch_size=8, depths=[2, 2], num_heads=[4, 2], window_size=4, dim_mlp=24,
                num_tab=2, scale=0.8),
           dict(embed_dim=16, patch_size=8, depth=12, num_heads=2, mlp_ratio=2.0, num_classes=10)),
}
MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _uniform(name: str, n: int) -> np.ndarray:
    """n values in [-1, 1) from splitmix64 of index + crc32(name)."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(zlib.crc32(name.encode()) << 20)
        z = z * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0


def value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    n = int(np.prod(shape)) if shape else 1
    u = _uniform(name, n)
    leaf = name.rsplit(".", 1)[-1]
    if ".norm" in name and leaf == "weight":  # LayerNorm gains
        v = 1.0 + 0.2 * u
    elif name == "fc_score.3.bias":
        v = 0.5 + 0.1 * u
    elif leaf in ("cls_token", "pos_embed"):
        v = 0.5 * u
    elif leaf == "relative_position_bias_table":
        v = 1.0 * u
    elif leaf == "bias":
        v = 0.05 * u
    else:  # weights: variance 1 / fan_in (x1.5 so the deep stack does not fade)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        v = u * np.sqrt(4.5 / fan_in)
    return torch.from_numpy(v.astype(np.float32)).reshape(shape)


def state_dict(manifest: dict[str, list[int]], buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint: recipe values for every parameter named in ``manifest`` (name -> shape) and
    the given tensors for the buffers (relative_position_index, attn_mask)."""
    out = {}
    for name, shape in manifest.items():
        out[name] = buffers[name] if name in buffers else value(name, tuple(shape))
    return out
