"""Selective scan (Mamba S6 recurrence), one direction, with mamba_ssm's argument conventions.

Shapes: u, delta (B, D, L); A (D, N); Bs, Cs (B, G, N, L) with D divisible by G; Ds, delta_bias (D,).
For each channel d and state n:

    dt_t = softplus(delta_t + bias)                  (when delta_softplus)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t  = <h_t, C_t> + D * u_t

All arithmetic is fp32; the result has u's dtype.
`selective_scan` picks the fastest implementation available for the tensors given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_groups(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, G, N, L) -> (B, D, N, L), each group shared by D // G consecutive channels."""
    groups = x.shape[1]
    return x.repeat_interleave(dim // groups, dim=1) if groups != dim else x


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Plain PyTorch step loop: the ground truth every faster implementation is tested against."""
    dtype_in = u.dtype
    u, delta, A = u.float(), delta.float(), A.float()
    dim = A.shape[0]
    B = _expand_groups(B.float(), dim)
    C = _expand_groups(C.float(), dim)
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta.unsqueeze(2) * A[None, :, :, None])  # (B, D, N, L)
    drive = (delta * u).unsqueeze(2) * B  # (B, D, N, L)
    h = u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = decay[..., t] * h + drive[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.float()[None, :, None]
    return y.to(dtype_in)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Dispatch to an implementation: 'auto', 'reference', 'numba' (CPU) or 'cuda' (mamba_ssm)."""
    if backend not in ("auto", "reference"):
        raise ValueError(f"selective_scan backend {backend!r} is not available in this build")
    return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus)
