"""Building blocks shared by MambaIRv2 (classic SR) and MambaIRv2-Light.

Module and attribute names follow the official implementation (csguoh/MambaIR) so that
``state_dict`` keys, shapes and their order are identical and released checkpoints load strictly.
The forward maths reproduces the official code, including its quirks (docs/method.md, "Stage U"):

* the Gumbel routing noise is drawn at inference too, one ``exponential_`` per ASSM call, in layer
  order, from the global RNG unless a ``torch.Generator`` is given;
* tokens are grouped with an *unstable* sort of their route index;
* the prompt added to ``C`` stays in the original pixel order while the sequence is sorted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from sr4.networks.scan import BACKENDS, selective_scan
from sr4.utils.windows import relative_position_index, shifted_window_mask, window_partition

RGB_MEAN = (0.4488, 0.4371, 0.4040)
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")
RESI_CONNECTIONS = ("1conv", "3conv")
SCAN_PROFILE_NAME = "sr4::selective_scan"


@dataclass
class ForwardContext:
    """What every layer of one forward pass shares: the shifted-window mask, the relative
    position index, where the routing noise comes from and the window token orders."""

    attn_mask: torch.Tensor
    rpi: torch.Tensor
    generator: torch.Generator | None
    window_size: int = 0
    size: tuple[int, int, int] = (0, 0, 0)  # (batch, height, width)
    _orders: dict[int, WindowOrder] = field(default_factory=dict)

    def window_order(self, shift: int) -> WindowOrder:
        """How the layers with this shift gather tokens into windows; built once per forward and shift."""
        if shift not in self._orders:
            self._orders[shift] = WindowOrder.build(self.size, self.window_size, shift,
                                                    self.attn_mask if shift > 0 else None, self.attn_mask.device)
        return self._orders[shift]


@dataclass
class WindowOrder:
    """Token order for window attention on a token-major (B*H*W, C) matrix.

    ``rows`` gathers the tokens of the image rolled by -shift into windows (what roll + window_partition
    produce, as one gather) and ``inverse`` puts them back. The windows are reordered so that the
    ``unmasked`` windows whose shift mask is all zero come first; window ``unmasked + j`` uses ``mask[j % len(mask)]``.
    Attention runs per window, so the window order is free, and only the masked windows need a materialised
    bias + mask."""

    rows: torch.Tensor
    inverse: torch.Tensor
    mask: torch.Tensor | None
    unmasked: int

    @classmethod
    def build(cls, size: tuple[int, int, int], ws: int, shift: int, mask: torch.Tensor | None,
              device: torch.device) -> WindowOrder:
        b, h, w = size
        rr = (torch.arange(h, device=device) + shift) % h
        cc = (torch.arange(w, device=device) + shift) % w
        pix = (rr[:, None] * w + cc[None, :]).view(1, h, w)
        pix = pix + (torch.arange(b, device=device) * (h * w)).view(b, 1, 1)
        windows = window_partition(pix.unsqueeze(-1), ws).view(b, -1, ws * ws)  # (B, nW, ws*ws)
        unmasked = 0
        if mask is not None:
            masked = mask.flatten(1).ne(0).any(1)
            free, used = (~masked).nonzero().view(-1), masked.nonzero().view(-1)
            windows = torch.cat([windows[:, free].reshape(-1), windows[:, used].reshape(-1)])
            mask, unmasked = mask.index_select(0, used), b * free.numel()
        rows = windows.reshape(-1)
        inverse = torch.empty_like(rows).scatter_(0, rows, torch.arange(rows.numel(), device=rows.device))
        return cls(rows, inverse, mask, unmasked)


# ----------------------------------------------------------------------------- layouts


def tokens_to_image(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) as a view: the result is channels_last in memory, so no copy is made
    and convolutions keep that layout."""
    b, _, c = x.shape
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


def image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a view when x is channels_last."""
    b, c = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(b, -1, c)


# ----------------------------------------------------------------------------- feed-forward


class DepthwiseConvGELU(nn.Module):
    """Depthwise kxk conv + GELU on a token sequence (official name ``dwconv``)."""

    def __init__(self, hidden_features: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.hidden_features = hidden_features
        self.depthwise_conv = nn.Sequential(
            nn.Conv2d(hidden_features, hidden_features, kernel_size, 1, (kernel_size - 1) // 2, groups=hidden_features),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        return image_to_tokens(self.depthwise_conv(tokens_to_image(x, x_size[0], x_size[1])))


class ConvFFN(nn.Module):
    """fc1 -> GELU -> x + dwconv(x) -> fc2 (classic MambaIRv2)."""

    def __init__(self, in_features: int, hidden_features: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.dwconv = DepthwiseConvGELU(hidden_features, kernel_size)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = self.dwconv(x, x_size).add_(x)  # in place on the GELU output, which no backward needs
        return self.fc2(x)


class Gate(nn.Module):
    """Spatial gate of the light variant: second half -> LayerNorm -> depthwise 5x5, times first half."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size=5, stride=1, padding=2, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        x2 = image_to_tokens(self.conv(tokens_to_image(self.norm(x2), h, w)))
        return x1 * x2


class GatedMLP(nn.Module):
    """fc1 -> GELU -> Gate -> fc2 (MambaIRv2-Light)."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.sg = Gate(hidden_features // 2)
        self.fc2 = nn.Linear(hidden_features // 2, in_features)
        self.drop = nn.Dropout(0.0)  # parameter-free, kept for module-name parity

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = self.sg(x, x_size[0], x_size[1])
        return self.fc2(x)


# ----------------------------------------------------------------------------- windows


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a relative position bias.

    Takes the already projected qkv (official layout: wqkv lives in the layer) and computes
    softmax((q * head_dim^-0.5) k^T + bias + mask) v in the official order of operations.
    """

    #: largest attention-score tensor computed at once (elements); more windows are processed in chunks.
    max_attention_elements: int = 1 << 24

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, qkv: torch.Tensor, rpi: torch.Tensor, mask: torch.Tensor | None, batch: int,
                unmasked: int = 0) -> torch.Tensor:
        """qkv (windows, ws*ws, 3C) -> (windows, ws*ws, C). With a mask (nM, n, n), the first ``unmasked`` windows
        get none and window ``unmasked + j`` gets ``mask[j % nM]`` (``unmasked=0``: the official layout, where
        window i of each of the ``batch`` images uses ``mask[i]``)."""
        bw, n, c3 = qkv.shape
        c = c3 // 3
        heads = self.num_heads
        hd = c // heads
        q, k, v = qkv.view(bw, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (bw, heads, n, hd)
        bias = self.relative_position_bias_table[rpi.reshape(-1)].view(n, n, heads).permute(2, 0, 1)
        bias = bias.to(qkv.dtype).contiguous().unsqueeze(0)  # the fused kernel reads a strided mask much more slowly
        # Fused attention: softmax(q k^T * scale + bias + mask) v without the (bw, heads, n, n) score tensor
        # of the official matmul/softmax/matmul (about 3x faster on CPU); only the additive mask of masked windows
        # is built, and windows are chunked so that it stays under max_attention_elements.
        step = max(1, self.max_attention_elements // (heads * n * n))
        lead = bw if mask is None else min(unmasked, bw)
        bounds = sorted({*range(0, bw, step), lead, bw} - {bw}) + [bw]
        parts = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            add = bias
            if s >= lead:
                assert mask is not None  # lead < bw only with a mask
                nm = mask.shape[0]
                picked = torch.arange(s - lead, e - lead, device=mask.device) % nm
                rows = mask if (s - lead == 0 and e - s == nm) else mask[picked]
                add = bias + rows.unsqueeze(1).to(qkv.dtype)
            out = F.scaled_dot_product_attention(q[s:e], k[s:e], v[s:e], attn_mask=add, scale=self.scale)
            parts.append(out.transpose(1, 2))  # (windows, n, heads, hd): concatenation makes it contiguous
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.proj(out.reshape(bw, n, c))


# ----------------------------------------------------------------------------- state space


@functools.cache
def _cpu_exponential_is_log1p_of_rand() -> bool:
    """Whether this torch's CPU fp32 ``exponential_`` draws each value as float(-log1p(-u)) from one fp64 ``rand``
    value, so the same numbers (and generator state) come from the vectorised ``rand`` + ``log1p`` (~1.5x faster;
    fp64 log1p differs from the serial one in the last bit at times, which fp32 rounding hides: 0 of 5e7 draws
    differed). Checked once per process on a private generator, so a torch with another sampler stays exact."""
    gen = torch.Generator()
    expected = torch.empty(4096).exponential_(generator=gen.manual_seed(7))
    state = gen.get_state()
    u = torch.rand(4096, dtype=torch.float64, generator=gen.manual_seed(7))
    return torch.equal(u.neg_().log1p_().neg_().float(), expected) and torch.equal(gen.get_state(), state)


def exponential_noise(shape: torch.Size, dtype: torch.dtype, device: torch.device,
                      generator: torch.Generator | None) -> torch.Tensor:
    """``torch.empty(shape, dtype, device).exponential_(generator=generator)``: the same values, drawn from the
    same generator (the global one of ``device`` when None), consuming it identically."""
    if device.type == "cpu" and dtype == torch.float32 and _cpu_exponential_is_log1p_of_rand():
        u = torch.rand(shape, dtype=torch.float64, generator=generator)
        return u.neg_().log1p_().neg_().float()
    return torch.empty(shape, dtype=dtype, device=device).exponential_(generator=generator)


def gumbel_hard_route(logits: torch.Tensor, generator: torch.Generator | None,
                      with_policy: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Hard Gumbel-softmax over the last dim with a straight-through gradient.

    Same operations, in the same order, as ``F.gumbel_softmax(logits, hard=True)`` (so the global RNG
    is consumed identically), but the noise may come from ``generator`` (on any device) and the chosen
    index is returned too. Returns (one-hot policy (.., T), index (.., 1)); the policy is None when
    ``with_policy`` is False (inference needs only the index: the forward value of the policy is one-hot).
    """
    if generator is not None and generator.device != logits.device:
        # e.g. a CPU generator driving a CUDA model: draw where the generator lives (fp32), then move.
        noise = exponential_noise(logits.shape, torch.float32, generator.device, generator)
        noise = noise.to(device=logits.device, dtype=logits.dtype)
    else:
        noise = exponential_noise(logits.shape, logits.dtype, logits.device, generator)
    y_soft = (logits - noise.log()).softmax(-1)
    index = y_soft.max(-1, keepdim=True)[1]
    if not with_policy:
        return None, index
    y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(-1, index, 1.0)
    return y_hard - y_soft.detach() + y_soft, index


class SelectiveScanParams(nn.Module):
    """One-direction S6 parameters (official name ``Selective_Scan``) and the scan call."""

    def __init__(self, d_model: int, d_state: int = 16, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.x_proj_weight = nn.Parameter(torch.empty(1, self.dt_rank + 2 * d_state, d_model))
        self.dt_projs_weight = nn.Parameter(torch.empty(1, d_model, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(1, d_model))
        self.A_logs = nn.Parameter(torch.empty(d_model, d_state))
        self.Ds = nn.Parameter(torch.empty(d_model))
        self.backend = "auto"  # selective_scan backend; set for the whole network through MambaIRv2Base.scan_backend
        self._init(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init(self, dt_min: float, dt_max: float, dt_floor: float) -> None:
        # Mamba's initialisation: dt spread log-uniformly in [dt_min, dt_max], S4D-real A, D = 1.
        if self.Ds.is_meta:
            return
        bound = 1.0 / math.sqrt(self.d_model)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_projs_weight, -std, std)
        dt = torch.exp(torch.rand(self.d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_projs_bias.copy_((dt + torch.log(-torch.expm1(-dt))).unsqueeze(0))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_model, -1))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) in scan order, prompt (B, L, N) in *pixel* order (official quirk) -> (B, L, D) fp32."""
        x_dbl = F.linear(x, self.x_proj_weight[0])  # (B, L, R + 2N)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        # delta = softplus(dt_proj(dts) + bias), formed here rather than in the scan: the bias rides in the GEMM and
        # W @ dts^T lands in the (B, D, L) layout the scan reads without a transposing copy.
        weight = self.dt_projs_weight[0].float()
        bias = self.dt_projs_bias.float().view(-1, 1)
        per_item = [torch.addmm(bias, weight, d.t()) for d in dts.float()]
        delta = F.softplus(per_item[0].unsqueeze(0) if len(per_item) == 1 else torch.stack(per_item))
        cs = cs.float() + prompt.float()
        # Named for profilers (benchmarks/bench_upsampler.py reports the scan's share of the forward).
        with torch.profiler.record_function(SCAN_PROFILE_NAME):
            y = self._scan(x, delta, bs, cs)
        return y.transpose(1, 2)

    def _scan(self, x: torch.Tensor, delta: torch.Tensor, bs: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
        return selective_scan(
            x.float().transpose(1, 2).contiguous(),
            delta,
            -torch.exp(self.A_logs.float()),
            # B and C stay (B, 1, N, L) views of (B, L, N) memory: the backends pick their own layout.
            bs.float().transpose(1, 2).unsqueeze(1),
            cs.transpose(1, 2).unsqueeze(1),
            self.Ds.float(),
            delta_bias=None,
            delta_softplus=False,
            backend=self.backend,
        )


class ASSM(nn.Module):
    """Attentive state-space module: route tokens to prompts, scan them grouped by route, unsort."""

    def __init__(self, dim: int, d_state: int, num_tokens: int = 64, inner_rank: int = 128,
                 mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.dim = dim
        self.num_tokens = num_tokens
        self.inner_rank = inner_rank
        self.d_state = d_state
        hidden = int(dim * mlp_ratio)
        self.selectiveScan = SelectiveScanParams(hidden, d_state)
        self.out_norm = nn.LayerNorm(hidden)
        self.act = nn.SiLU()  # unused by the official forward; parameter-free
        self.out_proj = nn.Linear(hidden, dim, bias=True)
        self.in_proj = nn.Sequential(nn.Conv2d(dim, hidden, 1, 1, 0))
        self.CPE = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden))
        self.embeddingB = nn.Embedding(num_tokens, inner_rank)
        nn.init.uniform_(self.embeddingB.weight, -1 / num_tokens, 1 / num_tokens)
        self.route = nn.Sequential(
            nn.Linear(dim, dim // 3), nn.GELU(), nn.Linear(dim // 3, num_tokens), nn.LogSoftmax(dim=-1)
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], token_weight: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
        b, n, c = x.shape
        h, w = x_size
        full_embedding = self.embeddingB.weight @ token_weight  # (T, N)
        logits = self.route(x)
        # Without gradients the straight-through policy is one-hot (to within rounding), so the prompt is a row
        # lookup instead of a (n, T) x (T, N) product.
        need_grad = torch.is_grad_enabled() and (logits.requires_grad or full_embedding.requires_grad)
        policy, index = gumbel_hard_route(logits, generator, with_policy=need_grad)
        if policy is not None:
            prompt = torch.matmul(policy, full_embedding)  # (B, n, N), pixel order
        else:
            prompt = F.embedding(index.squeeze(-1), full_embedding)
        order = torch.sort(index.view(b, n), dim=-1, stable=False)[1]
        # Row indices into the (B*n, .) flattened sequence; the inverse permutation undoes the sort.
        offsets = (torch.arange(b, device=x.device) * n).unsqueeze(1)
        rows = (order + offsets).view(-1)
        inverse = torch.empty_like(rows).scatter_(0, rows, torch.arange(b * n, device=x.device))

        # in_proj is a 1x1 conv: a linear map on tokens; CPE runs on a channels_last view.
        conv = cast(nn.Conv2d, self.in_proj[0])
        seq = F.linear(x, conv.weight.reshape(conv.out_channels, c), conv.bias)  # (B, n, hidden)
        seq = seq * image_to_tokens(self.CPE(tokens_to_image(seq, h, w))).sigmoid_()
        hidden = seq.shape[-1]

        seq = seq.reshape(b * n, hidden).index_select(0, rows).view(b, n, hidden)
        y = self.selectiveScan(seq, prompt).to(x.dtype)
        y = self.out_proj(self.out_norm(y))
        return y.reshape(b * n, c).index_select(0, inverse).view(b, n, c)


# ----------------------------------------------------------------------------- layers


FFNFactory = Callable[[int, int, int], nn.Module]  # (dim, hidden, kernel_size) -> module


def conv_ffn(dim: int, hidden: int, kernel_size: int) -> nn.Module:
    return ConvFFN(dim, hidden, kernel_size)


def gated_mlp(dim: int, hidden: int, kernel_size: int) -> nn.Module:
    return GatedMLP(dim, hidden)  # the light variant hard-codes its 5x5 gate conv


class AttentiveLayer(nn.Module):
    """(shifted) window attention + ConvFFN, then ASSM + ConvFFN, each with a learned long skip."""

    def __init__(self, dim: int, d_state: int, num_heads: int, window_size: int, shift_size: int, inner_rank: int,
                 num_tokens: int, convffn_kernel_size: int, mlp_ratio: float, qkv_bias: bool,
                 norm_layer: Callable[[int], nn.Module], ffn: FFNFactory) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = norm_layer(dim)
        self.norm2 = norm_layer(dim)
        self.norm3 = norm_layer(dim)
        self.norm4 = norm_layer(dim)
        self.scale1 = nn.Parameter(1e-4 * torch.ones(dim))
        self.scale2 = nn.Parameter(1e-4 * torch.ones(dim))
        self.wqkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.win_mhsa = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.assm = ASSM(dim, d_state, num_tokens=num_tokens, inner_rank=inner_rank, mlp_ratio=mlp_ratio)
        hidden = int(dim * mlp_ratio)
        self.convffn1 = ffn(dim, hidden, convffn_kernel_size)
        self.convffn2 = ffn(dim, hidden, convffn_kernel_size)
        self.embeddingA = nn.Embedding(inner_rank, d_state)
        nn.init.uniform_(self.embeddingA.weight, -1 / inner_rank, 1 / inner_rank)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], ctx: ForwardContext) -> torch.Tensor:
        h, w = x_size
        b, n, c = x.shape
        ws, shift = self.window_size, self.shift_size

        shortcut = x
        # roll + window_partition (and back) as one row gather each way; LayerNorm, wqkv and proj act per token,
        # so they commute with the reordering and run on 3x narrower rows than qkv.
        order = ctx.window_order(shift)
        xw = self.norm1(x).reshape(b * n, c).index_select(0, order.rows)
        qkv = self.wqkv(xw).view(b * n // (ws * ws), ws * ws, 3 * c)
        attn = self.win_mhsa(qkv, ctx.rpi, order.mask, b, order.unmasked)
        attn = attn.reshape(b * n, c).index_select(0, order.inverse)
        # Residual sums accumulate in place into fresh outputs whose values no backward reads (fewer 2-4 MB buffers).
        x_win = attn.view(b, n, c).add_(shortcut)
        x_win = self.convffn1(self.norm2(x_win), x_size).add_(x_win)
        x = x_win.addcmul_(shortcut, self.scale1)

        shortcut = x
        x_aca = self.assm(self.norm3(x), x_size, self.embeddingA.weight, ctx.generator).add_(x)
        x = self.convffn2(self.norm4(x_aca), x_size).add_(x_aca)
        return x.addcmul_(shortcut, self.scale2)


class BasicBlock(nn.Module):
    """``depth`` AttentiveLayers, shift 0 on even and ws/2 on odd layers."""

    def __init__(self, depth: int, window_size: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            AttentiveLayer(window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2, **layer_kwargs)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], ctx: ForwardContext) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, x_size, ctx)
        return x


def residual_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be one of {RESI_CONNECTIONS}, got {resi_connection!r}")


class ASSB(nn.Module):
    """Attentive state-space group: layers -> 3x3 conv (in image layout) -> + input."""

    def __init__(self, dim: int, depth: int, resi_connection: str, **block_kwargs) -> None:
        super().__init__()
        self.dim = dim
        self.residual_group = BasicBlock(depth=depth, dim=dim, **block_kwargs)
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], ctx: ForwardContext) -> torch.Tensor:
        y = self.residual_group(x, x_size, ctx)
        return image_to_tokens(self.conv(tokens_to_image(y, x_size[0], x_size[1]))).add_(x)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, HW, C), optionally LayerNorm-ed."""

    def __init__(self, embed_dim: int, norm_layer: Callable[[int], nn.Module] | None) -> None:
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


# ----------------------------------------------------------------------------- heads


def pixelshuffle_upsample(scale: int, num_feat: int) -> nn.Sequential:
    """[conv(F -> 4F) + PixelShuffle(2)] x log2(scale), or one conv(F -> 9F) + PixelShuffle(3)."""
    layers: list[nn.Module] = []
    if scale >= 1 and scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"upscale {scale} is not supported by the 'pixelshuffle' head (use 2^n or 3)")
    return nn.Sequential(*layers)


def _init_weights(m: nn.Module) -> None:
    # Official initialisation of Linear / LayerNorm, applied over the whole network after construction.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


# ----------------------------------------------------------------------------- network


class MambaIRv2Base(nn.Module):
    """Shared body of MambaIRv2 and MambaIRv2-Light; subclasses choose the feed-forward block."""

    ffn: FFNFactory = staticmethod(conv_ffn)
    relative_position_index_SA: torch.Tensor

    def __init__(
        self,
        img_size: int = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 48,
        d_state: int = 8,
        depths: tuple[int, ...] | list[int] = (6, 6, 6, 6),
        num_heads: tuple[int, ...] | list[int] = (4, 4, 4, 4),
        window_size: int = 16,
        inner_rank: int = 32,
        num_tokens: int = 64,
        convffn_kernel_size: int = 5,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 2,
        img_range: float = 1.0,
        upsampler: str = "",
        resi_connection: str = "1conv",
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
        if scan_backend not in BACKENDS:
            raise ValueError(f"scan_backend must be one of {BACKENDS}, got {scan_backend!r}")
        if upsampler == "nearest+conv" and upscale != 4:
            raise ValueError("the 'nearest+conv' head only supports upscale 4")
        if len(num_heads) < len(depths):
            raise ValueError(f"num_heads {list(num_heads)} must have an entry for each of the {len(depths)} stages")
        num_feat = 64
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.window_size = window_size
        self.embed_dim = embed_dim
        self.ape = ape
        self.in_chans = in_chans
        # Output size factor: the denoising/JPEG head ('') keeps the input size.
        self.scale = upscale if upsampler else 1
        # Flip padding doubles a side at most, so each side must cover half a window.
        self.min_size = (window_size + 1) // 2
        # Not a buffer (as in the official code): the checkpoint does not hold it.
        self.rgb_mean: tuple[float, ...] = RGB_MEAN if in_chans == 3 else (0.0,)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        if ape:
            patches = (img_size // patch_size) ** 2
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, patches, embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))

        self.layers = nn.ModuleList(
            ASSB(
                dim=embed_dim, depth=depths[i], resi_connection=resi_connection, d_state=d_state,
                num_heads=num_heads[i], window_size=window_size, inner_rank=inner_rank, num_tokens=num_tokens,
                convffn_kernel_size=convffn_kernel_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                norm_layer=norm_layer, ffn=type(self).ffn,
            )
            for i in range(len(depths))
        )
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)

        if upsampler in ("pixelshuffle", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(
                nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True)
            )
        if upsampler == "pixelshuffle":
            self.upsample = pixelshuffle_upsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(
                nn.Conv2d(embed_dim, upscale**2 * in_chans, 3, 1, 1), nn.PixelShuffle(upscale)
            )
        elif upsampler == "nearest+conv":
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)

        if not self.conv_first.weight.is_meta:
            self.apply(_init_weights)
        self.scan_backend = scan_backend

    @property
    def scan_backend(self) -> str:
        """The ``selective_scan`` backend every ASSM uses (see :mod:`sr4.networks.scan`); settable."""
        return self._scan_backend

    @scan_backend.setter
    def scan_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"scan_backend must be one of {BACKENDS}, got {backend!r}")
        self._scan_backend = backend
        for module in self.modules():
            if isinstance(module, SelectiveScanParams):
                module.backend = backend

    @property
    def memory_per_pixel(self) -> float:
        """Activation bytes per input pixel of one forward, for `--tile auto` (one pass when the image fits):
        fp32 features of the body, routing logits and the upsampling head, set about 2-3x above the peak measured
        on the CPU (MambaIRv2-B: 24 KB per LR pixel; 48- and 96-wide variants: 15-19 KB)."""
        tokens = max((m.num_tokens for m in self.modules() if isinstance(m, ASSM)), default=0)
        return 4.0 * (64 * self.embed_dim + 8 * tokens + 256 * self.scale ** 2)

    def noise_draws(self, height: int, width: int, batch: int = 1) -> list[int]:
        """How many routing-noise values each random call of a forward over a (batch, C, height, width) input
        draws, in call order: one ``exponential_`` of (batch, padded pixels, num_tokens) per ASSM."""
        ws = self.window_size
        pixels = -(-height // ws) * ws * (-(-width // ws) * ws)
        return [batch * pixels * m.num_tokens for m in self.modules() if isinstance(m, ASSM)]

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        # Mirror padding by concatenating the flipped image (not reflect: the edge row repeats).
        h, w = x.shape[-2:]
        ws = self.window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        x = torch.cat([x, torch.flip(x, [2])], 2)[:, :, :hp, :]
        return torch.cat([x, torch.flip(x, [3])], 3)[:, :, :, :wp]

    def forward_features(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        for layer in self.layers:
            x = layer(x, x_size, ctx)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], self.embed_dim, x_size[0], x_size[1])

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H*scale, W*scale). Routing noise from ``generator`` or the global RNG."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        h_ori, w_ori = x.shape[-2:]
        if min(h_ori, w_ori) < self.min_size:
            raise ValueError(
                f"input {h_ori}x{w_ori} is too small: {type(self).__name__} with window_size {self.window_size} "
                f"needs height and width >= {self.min_size}"
            )
        x = self._pad(x)
        h, w = x.shape[-2:]
        mean = torch.tensor(self.rgb_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) * self.img_range
        ctx = ForwardContext(
            attn_mask=shifted_window_mask(h, w, self.window_size, device=x.device),
            rpi=self.relative_position_index_SA,
            generator=generator,
            window_size=self.window_size,
            size=(x.shape[0], h, w),
        )
        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first, ctx)) + first)
        else:
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x, ctx)) + x
            if self.upsampler == "pixelshuffle":
                x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
            elif self.upsampler == "pixelshuffledirect":
                x = self.upsample(x)
            else:
                x = self.conv_before_upsample(x)
                x = self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))
                x = self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
                x = self.conv_last(self.lrelu(self.conv_hr(x)))
        x = x / self.img_range + mean
        return x[..., : h_ori * self.upscale, : w_ori * self.upscale]
