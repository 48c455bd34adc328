"""Selective scan on CUDA through mamba_ssm's fused kernel, when that package is installed.

- `mamba_ssm_available()` tries `from mamba_ssm.ops.selective_scan_interface import selective_scan_fn`
  once per process (cached) and never raises. Nothing imports mamba_ssm unless CUDA tensors are scanned,
  so CPU-only installations never touch it.
- `selective_scan_mamba` calls `selective_scan_fn` with the dtypes its kernel accepts: A, D and
  delta_bias in fp32, B and C in u's dtype. Its backward is mamba_ssm's own.
- Without mamba_ssm, `selective_scan(..., backend="auto")` on CUDA tensors runs the reference loop
  (correct but slow: one small kernel launch per step) after `warn_no_mamba_ssm()` has warned once.
  Install mamba_ssm (`pip install mamba-ssm --no-build-isolation`, needs nvcc matching torch's CUDA)
  for speed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import lru_cache

import torch


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
        f"({mamba_ssm_import_error()}); CUDA tensors use the PyTorch reference loop, which is slow. "
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
    # The kernel wants fp32 weights and B/C in the input dtype.
    return fn(
        u,
        delta,
        A.float(),
        B.to(u.dtype),
        C.to(u.dtype),
        None if D is None else D.float(),
        None,
        None if delta_bias is None else delta_bias.float(),
        delta_softplus,
    )
