"""Selective scan on CUDA through mamba_ssm's fused kernel, when that package is installed.

mamba_ssm is CUDA-only and not a dependency of sr4 (`pip install mamba-ssm --no-build-isolation`, needs nvcc
matching torch's CUDA). `mamba_ssm_available()` tries `from mamba_ssm.ops.selective_scan_interface import
selective_scan_fn` once per process (cached) and never raises; nothing imports mamba_ssm unless CUDA tensors are
scanned, so CPU-only installations never touch it. Without it, CUDA tensors are scanned by the chunked PyTorch
scan (`sr4.networks.scan.chunked`) after `warn_no_mamba_ssm()` has warned once.

`mamba_scan` calls `selective_scan_fn` with the dtypes its kernel accepts: A, D and delta_bias in fp32, delta,
B and C in u's dtype. Its backward is mamba_ssm's own. (Not run in this project's CI, which has no GPU; the
arguments follow mamba_ssm's `selective_scan_fn` signature.)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import lru_cache

import torch

from sr4.networks.scan.args import ScanArgs, scan_function


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
    """Warn, once per process, that CUDA tensors are scanned by the chunked PyTorch scan."""
    warnings.warn(
        "selective_scan: mamba_ssm is not importable "
        f"({mamba_ssm_import_error()}); CUDA tensors use a chunked PyTorch scan, which is slower. "
        "Install mamba-ssm for the fused CUDA kernel.",
        RuntimeWarning,
        stacklevel=3,
    )


def mamba_scan(args: ScanArgs) -> torch.Tensor:
    """mamba_ssm's `selective_scan_fn` on CUDA tensors (raises RuntimeError when it is unavailable)."""
    fn, reason = _import_mamba()
    if fn is None:
        raise RuntimeError(f"selective_scan backend 'cuda' needs mamba_ssm ({reason})")
    u = args.u
    if u.device.type != "cuda":
        raise RuntimeError(f"selective_scan backend 'cuda' needs CUDA tensors, got tensors on {u.device}")
    # The kernel wants fp32 weights and delta/B/C in the input dtype.
    return fn(
        u,
        args.delta.to(u.dtype),
        args.A.float(),
        args.B.to(u.dtype),
        args.C.to(u.dtype),
        None if args.D is None else args.D.float(),
        None,
        None if args.delta_bias is None else args.delta_bias.float(),
        args.delta_softplus,
    )


#: mamba_ssm's kernel with its own signature (arguments checked).
selective_scan_mamba = scan_function(mamba_scan)
