"""MUSIQ (Ke et al. 2021), the KonIQ-10k model, as pyiqa v0.1.13 ``create_metric('musiq')`` computes it.

Recipe (pyiqa's defaults for ``musiq``: ``pretrained='koniq10k'``, one output, so the score is the
head's single value, roughly 0-100 for KonIQ):

- input (B, 3, H, W) in [0, 1] -> ``2x - 1``;
- three scales: the image resized (aspect kept, bicubic without antialiasing, sizes rounded with
  Python's ``round``) so its longer side is 224, then 384, then the image at its own resolution;
- each scale padded TensorFlow-"SAME"-style with zeros (the odd pixel at the bottom/right) to a
  multiple of the patch size (32) and cut into non-overlapping 32x32 patches, row-major;
- every patch gets a hashed spatial index (its row and column each mapped to a 10-cell grid by
  torch's "nearest" rule, index = row * 10 + col) and its scale index (0, 1, 2);
- pyiqa pads each resized scale to ceil(L / 32)^2 tokens with masked zero patches. Masked keys get
  the logit -1000 before the softmax, whose weight is exactly 0 in float32, and no unmasked token
  ever reads a masked one, so this module simply leaves them out (same result, less work);
- patch stem: weight-standardised 7x7/2 conv (3->64, "SAME" zero padding), GroupNorm(32, eps 1e-6),
  ReLU, 3x3/2 max-pool ("SAME"), one bottleneck block 64->256 (weight-standardised convs,
  GroupNorm eps 1e-4, projected shortcut); the 256x8x8 map is flattened channels-last and
  projected to the hidden size (384);
- + spatial embedding[hash] + scale embedding[scale], a learnt CLS token in front, 14 pre-norm
  transformer blocks (6 heads, MLP 1152, exact GELU, LayerNorm eps 1e-6), a final LayerNorm and a
  linear head on the CLS token. Checkpoints with several outputs (AVA) get a softmax and the mean
  opinion score ``sum_k p_k * k``, as pyiqa does.

Weights: pyiqa's ``musiq_koniq_ckpt-e95806b9.pth`` (a state dict of pyiqa's MUSIQ module; the keys are
used as they are). Sizes that differ from the default (layers, hidden size, MLP width, patch size,
grid size, scales, outputs) are read from the tensor shapes; the number of heads cannot be and is an
argument.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sr4.metrics.weights import (
    MUSIQ_KONIQ,
    WeightFile,
    WeightsError,
    assign,
    read_state_dict,
    require_filled,
    resolve_root,
)

VERSION = "MUSIQ koniq (pyiqa 0.1.13 semantics)"
WEIGHT_FILES: tuple[WeightFile, ...] = (MUSIQ_KONIQ,)

_STEM_CHANNELS = 64  # fixed by the architecture (GroupNorm with 32 groups)
_TOKEN_CHANNELS = 4 * _STEM_CHANNELS


@dataclass(frozen=True)
class MUSIQConfig:
    """Architecture and preprocessing of MUSIQ; the defaults are those of pyiqa's KonIQ model."""

    patch_size: int = 32
    hidden_size: int = 384
    mlp_dim: int = 1152
    num_heads: int = 6
    num_layers: int = 14
    num_scales: int = 3
    spatial_pos_grid_size: int = 10
    num_class: int = 1
    longer_side_lengths: tuple[int, ...] = (224, 384)
    # Patches kept from the image at its own resolution: -1 all of them, None leave that scale out.
    max_seq_len_from_original_res: int | None = -1

    def __post_init__(self) -> None:
        if self.patch_size % 4 or self.patch_size <= 0:
            raise ValueError(f"patch_size must be a positive multiple of 4, got {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        used = len(self.longer_side_lengths) + (self.max_seq_len_from_original_res is not None)
        if used > self.num_scales:
            raise ValueError(f"{used} scales are used but the scale embedding has only {self.num_scales}")


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero padding of TensorFlow's 'SAME' convolutions: the extra pixel goes bottom/right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class _StdConv(nn.Conv2d):
    """Convolution with weight standardisation (per output channel, unbiased std + 1e-5) and 'SAME' padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(_same_pad(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _StdConv(cin, cin, 1)
        self.gn1 = nn.GroupNorm(32, cin, eps=1e-4)
        self.conv2 = _StdConv(cin, cin, 3)
        self.gn2 = nn.GroupNorm(32, cin, eps=1e-4)
        self.conv3 = _StdConv(cin, cout, 1)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-4)
        self.conv_proj = _StdConv(cin, cout, 1)
        self.gn_proj = nn.GroupNorm(32, cout, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.gn_proj(self.conv_proj(x))
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(self.gn3(self.conv3(y)) + shortcut)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PositionEmbedding(nn.Module):
    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        self.position_emb = nn.Parameter(torch.zeros(1, grid * grid, dim))


class _ScaleEmbedding(nn.Module):
    def __init__(self, scales: int, dim: int) -> None:
        super().__init__()
        self.scale_emb = nn.Parameter(torch.zeros(scales, dim))


class _Encoder(nn.Module):
    def __init__(self, cfg: MUSIQConfig) -> None:
        super().__init__()
        self.posembed_input = _PositionEmbedding(cfg.spatial_pos_grid_size, cfg.hidden_size)
        self.scaleembed_input = _ScaleEmbedding(cfg.num_scales, cfg.hidden_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.transformer = nn.ModuleDict(
            {f"encoderblock_{i}": _Block(cfg.hidden_size, cfg.mlp_dim, cfg.num_heads) for i in range(cfg.num_layers)}
        )
        self.encoder_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-6)

    def forward(self, tokens: torch.Tensor, spatial: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x = tokens + self.posembed_input.position_emb[0, spatial] + self.scaleembed_input.scale_emb[scale]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.transformer.values():
            x = block(x)
        return self.encoder_norm(x[:, 0])  # only the CLS token is read out


def _hashed_positions(rows: int, cols: int, grid: int) -> torch.Tensor:
    """Row-major grid index of every patch of a rows x cols patch grid, squeezed onto grid x grid cells."""

    # torch's 'nearest' resampling of 0..grid-1 to n samples is the mapping pyiqa uses.
    def cells(n: int) -> torch.Tensor:
        return F.interpolate(torch.arange(grid, dtype=torch.float32)[None, None], size=n, mode="nearest")[0, 0].long()

    return (cells(rows)[:, None] * grid + cells(cols)[None, :]).reshape(-1)


def _patches(x: torch.Tensor, size: int) -> tuple[torch.Tensor, int, int]:
    """'SAME'-padded non-overlapping patches, row-major: (B, rows * cols, 3, size, size)."""
    x = _same_pad(x, size, size)
    b, c, h, w = x.shape
    rows, cols = h // size, w // size
    p = x.reshape(b, c, rows, size, cols, size).permute(0, 2, 4, 1, 3, 5)
    return p.reshape(b, rows * cols, c, size, size), rows, cols


class MUSIQ(nn.Module):
    """MUSIQ no-reference quality. ``MUSIQ()`` has random weights; ``MUSIQ.from_pretrained`` loads the real ones.

    ``forward(x)``: (B, 3, H, W) in [0, 1] -> (B,) scores (KonIQ MOS scale, higher is better).
    """

    def __init__(self, config: MUSIQConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MUSIQConfig()
        self.conv_root = _StdConv(3, _STEM_CHANNELS, 7, 2)
        self.gn_root = nn.GroupNorm(32, _STEM_CHANNELS, eps=1e-6)
        self.block1 = _Bottleneck(_STEM_CHANNELS, _TOKEN_CHANNELS)
        self.embedding = nn.Linear(_TOKEN_CHANNELS * (cfg.patch_size // 4) ** 2, cfg.hidden_size)
        self.transformer_encoder = _Encoder(cfg)
        self.head = nn.Linear(cfg.hidden_size, cfg.num_class)
        self.requires_grad_(False)
        self.eval()

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The multi-scale patches without pyiqa's masked padding: (B, N, 3, P, P), spatial (N,), scale (N,)."""
        cfg = self.config
        h, w = x.shape[-2:]
        views: list[tuple[torch.Tensor, int]] = []
        for length in sorted(cfg.longer_side_lengths):
            ratio = length / max(h, w)
            size = (round(h * ratio), round(w * ratio))
            if min(size) < 1:
                too_thin = f"its {length}-px scale would be {size[0]}x{size[1]}"
                raise ValueError(f"MUSIQ cannot score a {h}x{w} image: {too_thin}")
            views.append((F.interpolate(x, size=size, mode="bicubic", align_corners=False), -1))
        if cfg.max_seq_len_from_original_res is not None:
            views.append((x, cfg.max_seq_len_from_original_res))
        patches, spatial, scale = [], [], []
        for scale_id, (view, limit) in enumerate(views):
            p, rows, cols = _patches(view, cfg.patch_size)
            pos = _hashed_positions(rows, cols, cfg.spatial_pos_grid_size)
            if limit >= 0:  # pyiqa keeps the first `limit` patches (padding the rest, which is masked)
                p, pos = p[:, :limit], pos[:limit]
            patches.append(p)
            spatial.append(pos)
            scale.append(torch.full_like(pos, scale_id))
        return torch.cat(patches, 1), torch.cat(spatial).to(x.device), torch.cat(scale).to(x.device)

    def _embed(self, patches: torch.Tensor) -> torch.Tensor:
        b, n = patches.shape[:2]
        y = F.relu(self.gn_root(self.conv_root(patches.flatten(0, 1))))
        y = F.max_pool2d(_same_pad(y, 3, 2), 3, 2)  # zero padding is harmless after the ReLU
        y = self.block1(y)
        return self.embedding(y.permute(0, 2, 3, 1).reshape(b, n, -1))  # channels last, as the TF original

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.numel() == 0 or not x.is_floating_point():
            raise ValueError(f"MUSIQ expects a non-empty float (B, 3, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"MUSIQ expects values in [0, 1], got min {float(x.min()):.4g}, max {float(x.max()):.4g}")
        x = x.to(self.embedding.weight.dtype)
        patches, spatial, scale = self.tokens(x * 2 - 1)
        q = self.head(self.transformer_encoder(self._embed(patches), spatial, scale))
        if q.shape[1] == 1:
            return q[:, 0]
        p = q.softmax(-1)  # score distribution (AVA): its mean opinion score
        return (p * torch.arange(1, q.shape[1] + 1, dtype=p.dtype, device=p.device)).sum(-1)

    @staticmethod
    def config_from_state_dict(tensors: dict[str, torch.Tensor], source: Path | str = "weights",
                               num_heads: int = 6) -> MUSIQConfig:
        """The sizes of the network that ``tensors`` (pyiqa key names) belong to."""
        need = ["embedding.weight", "transformer_encoder.posembed_input.position_emb",
                "transformer_encoder.scaleembed_input.scale_emb", "transformer_encoder.encoder_norm.weight"]
        missing = [k for k in need if k not in tensors]
        head = tensors.get("head.weight", tensors.get("head.0.weight"))
        if missing or head is None:
            raise WeightsError(f"{source}: not a MUSIQ weight file (missing {', '.join(missing) or 'head.weight'})")
        hidden, flat = tensors["embedding.weight"].shape
        token = math.isqrt(flat // _TOKEN_CHANNELS)
        if token * token * _TOKEN_CHANNELS != flat:
            raise WeightsError(f"{source}: embedding.weight has {flat} inputs, not 256 * t^2")
        grid_cells = tensors["transformer_encoder.posembed_input.position_emb"].shape[1]
        grid = math.isqrt(grid_cells)
        if grid * grid != grid_cells:
            raise WeightsError(f"{source}: position_emb has {grid_cells} cells, not a square grid")
        layers = sorted({int(m.group(1)) for k in tensors
                         if (m := re.match(r"transformer_encoder\.transformer\.encoderblock_(\d+)\.", k))})
        if not layers or layers != list(range(len(layers))):
            raise WeightsError(f"{source}: transformer blocks are not encoderblock_0..N-1 (found {layers})")
        mlp = tensors["transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight"].shape[0]
        try:
            return MUSIQConfig(
                patch_size=4 * token, hidden_size=hidden, mlp_dim=mlp, num_heads=num_heads, num_layers=len(layers),
                num_scales=tensors["transformer_encoder.scaleembed_input.scale_emb"].shape[0],
                spatial_pos_grid_size=grid, num_class=head.shape[0],
            )
        except ValueError as exc:
            raise WeightsError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike, num_heads: int = 6) -> MUSIQ:
        """Build the network described by a pyiqa MUSIQ checkpoint and load it."""
        path = Path(path)
        tensors = read_state_dict(path)
        # pyiqa wraps a multi-output head in Sequential(Linear, Softmax): its keys read head.0.*
        tensors = {re.sub(r"^head\.0\.", "head.", k): v for k, v in tensors.items()}
        model = cls(cls.config_from_state_dict(tensors, path, num_heads))
        filled: set[str] = set()
        assign(model, tensors, path, filled)
        require_filled(model, filled, f"MUSIQ from {path}")
        return model

    @classmethod
    def from_pretrained(cls, weights_dir: str | os.PathLike | None = None,
                        device: torch.device | str = "cpu", num_heads: int = 6) -> MUSIQ:
        """Load pyiqa's KonIQ checkpoint from ``weights_dir`` (default: torch's hub dir); never downloads."""
        root = resolve_root(weights_dir)
        path = MUSIQ_KONIQ.find(root)
        if path is None:
            raise WeightsError(f"MUSIQ weights not found: {MUSIQ_KONIQ.candidates(root)[0]}")
        return cls.from_file(path, num_heads).to(device)
