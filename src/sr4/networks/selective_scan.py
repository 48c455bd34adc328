"""Selective scan (Mamba S6 recurrence), one direction, with mamba_ssm's argument conventions.

Shapes: u, delta (B, D, L); A (D, N); Bs, Cs (B, G, N, L) or (B, N, L) with D divisible by G (channel d
uses group d // (D // G)); Ds, delta_bias (D,). For each channel d and state n:

    dt_t = softplus(delta_t + bias)                  (when delta_softplus; softplus(x) = x above 20)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t  = <h_t, C_t> + D * u_t

All arithmetic is fp32 (fp64 for fp64 inputs); the result has u's dtype.

Backends (`selective_scan(..., backend=...)`):
- 'reference': `selective_scan_reference`, a plain PyTorch step loop; the ground truth for the others.
- 'numba': CPU kernels with forward and backward (`scan_numba`).
- 'cuda': mamba_ssm's CUDA kernel (`scan_cuda`), used only when mamba_ssm imports.
- 'chunked': a PyTorch scan over chunks of steps (`scan_cuda.selective_scan_chunked`), any device.
- 'auto': 'cuda' for CUDA tensors when mamba_ssm imports, else 'chunked' with a one-time warning;
  'numba' for CPU tensors when numba imports, else the reference.
Dispatch keeps no state besides cached imports, so concurrent calls from several threads are safe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "reference", "numba", "cuda", "chunked")


def _groups_4d(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1) if x.dim() == 3 else x


def check_scan_args(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Raise ValueError naming the argument whose shape or dtype does not fit mamba_ssm's conventions."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must have shape (batch, dim, length), got {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must have shape ({dim}, d_state), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported")
    nstate = A.shape[1]
    for name, x in (("B", B), ("C", C)):
        if x.dim() not in (3, 4):
            raise ValueError(f"selective_scan: {name} must have shape (batch, groups, d_state, length) or "
                             f"(batch, d_state, length), got {tuple(x.shape)}")
        x4 = _groups_4d(x)
        groups = x4.shape[1]
        if x4.shape[0] != batch or x4.shape[2] != nstate or x4.shape[3] != length or groups == 0:
            raise ValueError(f"selective_scan: {name} must have shape ({batch}, groups, {nstate}, {length}), "
                             f"got {tuple(x.shape)}")
        if dim % groups:
            raise ValueError(f"selective_scan: {name} has {groups} groups, which does not divide dim {dim}")
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and tuple(x.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must have shape ({dim},), got {tuple(x.shape)}")
    for name, x in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("delta_bias", delta_bias)):
        if x is not None and not x.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be a floating-point tensor, got {x.dtype}")
        if x is not None and x.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {x.device} but u is on {u.device}")


def _expand_groups(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, G, N, L) -> (B, D, N, L): channel d reads group d // (D // G), as mamba_ssm's repeat does."""
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
    """Plain PyTorch step loop: the ground truth every faster implementation is tested against.

    Materialises (B, D, L, N) decay and input tensors, like mamba_ssm's `selective_scan_ref`.
    """
    check_scan_args(u, delta, A, B, C, D, delta_bias)
    dtype_in = u.dtype
    work = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, A = u.to(work), delta.to(work), A.to(work)
    dim = A.shape[0]
    B = _expand_groups(_groups_4d(B).to(work), dim).transpose(2, 3)  # (B, D, L, N)
    C = _expand_groups(_groups_4d(C).to(work), dim).transpose(2, 3)
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)  # beta 1, threshold 20, as in mamba_ssm
    decay = torch.exp(delta.unsqueeze(-1) * A[None, :, None, :])  # (B, D, L, N)
    drive = (delta * u).unsqueeze(-1) * B
    h = u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    # unbind (rather than indexing per step) keeps autograd's backward to one stack per tensor instead
    # of one full-size zero tensor per step.
    for decay_t, drive_t, c_t in zip(decay.unbind(2), drive.unbind(2), C.unbind(2)):
        h = decay_t * h + drive_t
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape)
    if D is not None:
        y = y + u * D.to(work)[None, :, None]
    return y.to(dtype_in)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the implementations usable for tensors on `device` (without compiling anything)."""
    from sr4.networks import scan_cuda, scan_numba

    device = torch.device(device)
    names = ["reference", "chunked"]
    if device.type == "cpu" and scan_numba.numba_available():
        names.append("numba")
    if device.type == "cuda" and scan_cuda.mamba_ssm_available():
        names.append("cuda")
    return names


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
    """Dispatch to an implementation: 'auto', 'reference', 'numba' (CPU), 'cuda' (mamba_ssm) or 'chunked'.

    An explicitly named backend that cannot run on these tensors raises RuntimeError; an unknown name
    raises ValueError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    check_scan_args(u, delta, A, B, C, D, delta_bias)
    from sr4.networks import scan_cuda, scan_numba

    on_cuda = u.device.type == "cuda"
    if backend == "auto":
        if on_cuda:
            backend = "cuda" if scan_cuda.mamba_ssm_available() else "cuda-fallback"
        else:
            backend = "numba" if u.device.type == "cpu" and scan_numba.numba_available() else "reference"
    args = (u, delta, A, B, C, D, delta_bias, delta_softplus)
    if backend == "numba":
        if u.device.type != "cpu":
            raise RuntimeError(f"selective_scan backend 'numba' needs CPU tensors, got tensors on {u.device}")
        if not scan_numba.numba_available():
            raise RuntimeError("selective_scan backend 'numba' needs the numba package (pip install numba)")
        return scan_numba.selective_scan_numba(*args)
    if backend == "cuda":
        if not on_cuda:
            raise RuntimeError(f"selective_scan backend 'cuda' needs CUDA tensors, got tensors on {u.device}")
        if not scan_cuda.mamba_ssm_available():
            raise RuntimeError("selective_scan backend 'cuda' needs mamba_ssm with its CUDA extension "
                               f"(import failed: {scan_cuda.mamba_ssm_import_error()})")
        return scan_cuda.selective_scan_mamba(*args)
    if backend == "cuda-fallback":
        scan_cuda.warn_no_mamba_ssm()
        backend = "chunked"
    if backend == "chunked":
        return scan_cuda.selective_scan_chunked(*args)
    return selective_scan_reference(*args)
