"""Transformer pieces of MANIQA: the timm ViT trunk and MANIQA's Swin variant.

Parameter names follow the modules pyiqa builds (timm ``VisionTransformer`` and pyiqa's
``maniqa_swin``), so the checkpoint's keys load without renaming:

- ViT (timm ``vit_base_patch8_224``): ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
  ``blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``; pre-norm blocks, LayerNorm
  eps 1e-6, exact GELU, qkv with bias.
- Swin: ``layers.<l>.blocks.<b>.{norm1, attn.qkv, attn.proj, attn.relative_position_bias_table,
  norm2, mlp.fc1, mlp.fc2}`` and ``layers.<l>.conv``. Unlike the original Swin, every stage keeps
  the resolution and width, ends in ``relu(conv3x3)`` and is added back as ``scale * stage(x) + x``.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from sr4.utils.windows import relative_position_index, shifted_window_mask, window_partition, window_reverse


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _ViTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViT width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim**-0.5, as timm's fused path
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _ViTAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTTrunk(nn.Module):
    """The first ``depth`` blocks of a ViT; returns the token sequences after the requested blocks.

    MANIQA only reads blocks 6-9 of the 12, so the last blocks, the final norm and the classifier
    head never influence its score and are not built (their tensors in the file are ignored).
    """

    def __init__(self, dim: int = 768, depth: int = 10, num_heads: int = 12, mlp_hidden: int = 3072,
                 patch_size: int = 8, img_size: int = 224) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.img_size = img_size
        tokens = (img_size // patch_size) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.ModuleList(ViTBlock(dim, num_heads, mlp_hidden) for _ in range(depth))

    def forward(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"ViT input must be {self.img_size}x{self.img_size}, got {tuple(x.shape[-2:])}")
        x = cast(nn.Conv2d, self.patch_embed.proj)(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        out = {}
        last = max(taps)
        for i, blk in enumerate(self.blocks[: last + 1]):
            x = blk(x)
            if i in taps:
                out[i] = x
        return [out[i] for i in taps]


class WindowAttention(nn.Module):
    relative_position_index: torch.Tensor

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Persistent like in pyiqa: a checkpoint's copy replaces the computed one when loaded.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]).view(bw, self.num_heads, n, n)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, shift: int,
                 mlp_hidden: int) -> None:
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window:  # one window covers the map: no partition, no shift
            window, shift = min(resolution), 0
        if resolution[0] % window or resolution[1] % window:
            raise ValueError(f"Swin window {window} does not tile the {resolution[0]}x{resolution[1]} token grid")
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, mlp_hidden)
        mask = shifted_window_mask(*resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, wd = self.resolution
        b, n, c = x.shape
        y = self.norm1(x).view(b, h, wd, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window), self.attn_mask)
        y = window_reverse(y, self.window, h, wd)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class SwinStage(nn.Module):
    """Swin blocks alternating plain / half-shifted windows, then ReLU(conv3x3) on the map."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window: int,
                 mlp_hidden: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_hidden)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        b, n, c = x.shape
        m = x.transpose(1, 2).reshape(b, c, *self.resolution)
        return F.relu(self.conv(m)).flatten(2).transpose(1, 2)


class SwinGroup(nn.Module):
    """MANIQA's ``SwinTransformer``: (B, C, H, W) -> (B, C, H, W) through residually scaled stages.

    pyiqa's module also owns a stride-2 ``downsample`` conv that its forward never calls; it is not
    built here and its tensors in the file are ignored.
    """

    def __init__(self, dim: int, resolution: tuple[int, int], depths: tuple[int, ...], num_heads: tuple[int, ...],
                 window: int, mlp_hidden: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.layers = nn.ModuleList(
            SwinStage(dim, resolution, d, h, window, mlp_hidden) for d, h in zip(depths, num_heads, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.transpose(1, 2).reshape(b, c, h, w)
