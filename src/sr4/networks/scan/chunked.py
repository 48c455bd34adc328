"""The selective scan in PyTorch ops on any device, a chunk of steps at a time (inference on CUDA without mamba_ssm).

Inside a chunk of T steps, with S_t = sum_{s<=t} dt_s * A (per channel and state), the state is
h_t = exp(S_t) h_0 + sum_{s<=t} exp(S_t - S_s) dt_s B_s u_s. Only differences S_t - S_s with s <= t are
exponentiated, so nothing overflows that the step loop would not. It costs O(B D N L T) work and O(B D N T^2)
memory per chunk, with one batched step per chunk instead of one kernel launch per step (the reference loop);
autograd keeps each chunk's weights for the backward, so it is meant for inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sr4.networks.scan.args import ScanArgs, scan_function

# Elements of the largest per-chunk temporary, (B, D, T, T, N): 2^26 fp32 values = 256 MiB.
_CHUNK_BUDGET = 1 << 26


def chunked_scan(args: ScanArgs, chunk: int | None = None) -> torch.Tensor:
    """The scan over chunks of `chunk` steps (None: as many as the memory budget allows, at most 64)."""
    dtype_in = args.u.dtype
    work = torch.float64 if dtype_in == torch.float64 else torch.float32
    batch, dim, length = args.u.shape
    nstate = args.A.shape[1]
    B4, C4 = args.B4.to(work), args.C4.to(work)
    groups = B4.shape[1]
    u, delta, A = args.u.to(work), args.delta.to(work), args.A.to(work)
    if args.delta_bias is not None:
        delta = delta + args.delta_bias.to(work)[None, :, None]
    dt = F.softplus(delta) if args.delta_softplus else delta
    if chunk is None:
        chunk = max(1, min(64, math.isqrt(max(1, _CHUNK_BUDGET // max(1, batch * dim * nstate)))))
    # Channels as (G, D/G) so B and C broadcast over the channels of their group without copies.
    per = dim // groups
    dt_g = dt.view(batch, groups, per, length)
    u_g = u.view(batch, groups, per, length)
    A_g = A.view(groups, per, nstate)
    h = u.new_zeros(batch, groups, per, nstate)
    outputs = []
    for start in range(0, length, chunk):
        stop = min(length, start + chunk)
        steps = stop - start
        dt_c = dt_g[..., start:stop].unsqueeze(-1)  # (B, G, P, T, 1)
        log_decay = torch.cumsum(dt_c * A_g[None, :, :, None, :], dim=3)  # S_t: (B, G, P, T, N)
        b_c = B4[..., start:stop].transpose(-1, -2).unsqueeze(2)  # (B, G, 1, T, N)
        c_c = C4[..., start:stop].transpose(-1, -2).unsqueeze(2)
        drive = dt_c * u_g[..., start:stop].unsqueeze(-1) * b_c  # (B, G, P, T, N)
        diff = log_decay.unsqueeze(4) - log_decay.unsqueeze(3)  # [t, s] = S_t - S_s: (B, G, P, T, T, N)
        causal = torch.ones(steps, steps, dtype=torch.bool, device=u.device).tril()
        weights = torch.exp(diff.masked_fill(~causal[:, :, None], float("-inf")))
        states = torch.einsum("bgptsn,bgpsn->bgptn", weights, drive) + torch.exp(log_decay) * h.unsqueeze(3)
        outputs.append((states * c_c).sum(-1))  # (B, G, P, T)
        h = states[:, :, :, -1]
    y = torch.cat(outputs, dim=-1).reshape(batch, dim, length) if outputs else u.new_zeros(u.shape)
    if args.D is not None:
        y = y + u * args.D.to(work)[None, :, None]
    return y.to(dtype_in)


#: the chunked scan with mamba_ssm's signature (arguments checked) and an optional ``chunk=`` step count.
selective_scan_chunked = scan_function(chunked_scan)
