"""Selective scan on CUDA through mamba_ssm's fused kernel, when that package is installed.

- `mamba_ssm_available()` tries `from mamba_ssm.ops.selective_scan_interface import selective_scan_fn`
  once per process (cached) and never raises. Nothing imports mamba_ssm unless CUDA tensors are scanned,
  so CPU-only installations never touch it.
- `selective_scan_mamba` calls `selective_scan_fn` with the dtypes its kernel accepts: A, D and
  delta_bias in fp32, delta, B and C in u's dtype. Its backward is mamba_ssm's own. (Not run in this
  project's CI, which has no GPU; the arguments follow mamba_ssm's `selective_scan_fn` signature.)
- Without mamba_ssm, `selective_scan(..., backend="auto")` on CUDA tensors runs `selective_scan_chunked`
  after `warn_no_mamba_ssm()` has warned once: plain PyTorch on any device, in chunks of T steps with
  one batched step per chunk instead of one kernel launch per step (the reference loop). It costs
  O(B D N L T) work and O(B D N T^2) memory per chunk, and autograd keeps each chunk's weights for the
  backward, so it is meant for inference. Install mamba_ssm (`pip install mamba-ssm --no-build-isolation`,
  needs nvcc matching torch's CUDA) for speed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=1)
def _import_mamba() -> tuple[Callable[..., torch.Tensor] | None, str]:
    """(selective_scan_fn, '') when mamba_ssm imports, else (None, reason). Cached: imports are process-wide."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, or an OSError/RuntimeError from a broken CUDA extension
        return None, f"{type(exc).__name__}: {exc}"
    return selective_scan_fn, ""


def mamba_ssm_available() -> bool:
    """True when mamba_ssm and its CUDA extension import on this machine."""
    return _import_mamba()[0] is not None


def mamba_ssm_import_error() -> str:
    """Why mamba_ssm did not import ('' when it did)."""
    return _import_mamba()[1]


@lru_cache(maxsize=1)
def warn_no_mamba_ssm() -> None:
    """Warn, once per process, that CUDA tensors are scanned by the slow reference loop."""
    warnings.warn(
        "selective_scan: mamba_ssm is not importable "
        f"({mamba_ssm_import_error()}); CUDA tensors use a chunked PyTorch scan, which is slower. "
        "Install mamba-ssm for the fused CUDA kernel.",
        RuntimeWarning,
        stacklevel=3,
    )


def selective_scan_mamba(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """mamba_ssm's `selective_scan_fn` on CUDA tensors (raises RuntimeError when it is unavailable)."""
    fn, reason = _import_mamba()
    if fn is None:
        raise RuntimeError(f"selective_scan backend 'cuda' needs mamba_ssm ({reason})")
    if u.device.type != "cuda":
        raise RuntimeError(f"selective_scan backend 'cuda' needs CUDA tensors, got tensors on {u.device}")
    # The kernel wants fp32 weights and delta/B/C in the input dtype.
    return fn(
        u,
        delta.to(u.dtype),
        A.float(),
        B.to(u.dtype),
        C.to(u.dtype),
        None if D is None else D.float(),
        None,
        None if delta_bias is None else delta_bias.float(),
        delta_softplus,
    )


# Elements of the largest per-chunk temporary, (B, D, T, T, N): 2^26 fp32 values = 256 MiB.
_CHUNK_BUDGET = 1 << 26


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk: int | None = None,
) -> torch.Tensor:
    """The selective scan in PyTorch ops on any device, T = `chunk` steps at a time.

    Inside a chunk, with S_t = sum_{s<=t} dt_s * A (per channel and state), the state is
    h_t = exp(S_t) h_0 + sum_{s<=t} exp(S_t - S_s) dt_s B_s u_s. Only differences S_t - S_s with s <= t are
    exponentiated, so nothing overflows that the step loop would not.
    """
    from sr4.networks.selective_scan import check_scan_args

    check_scan_args(u, delta, A, B, C, D, delta_bias)
    dtype_in = u.dtype
    work = torch.float64 if dtype_in == torch.float64 else torch.float32
    batch, dim, length = u.shape
    nstate = A.shape[1]
    B4 = (B.unsqueeze(1) if B.dim() == 3 else B).to(work)
    C4 = (C.unsqueeze(1) if C.dim() == 3 else C).to(work)
    groups = B4.shape[1]
    u, delta, A = u.to(work), delta.to(work), A.to(work)
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[None, :, None]
    dt = F.softplus(delta) if delta_softplus else delta
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
    if D is not None:
        y = y + u * D.to(work)[None, :, None]
    return y.to(dtype_in)
