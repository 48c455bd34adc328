"""Selective scan on CPU: numba kernels (`scan_numba_kernels`) for forward and backward, in an autograd Function.

Design:
- The forward runs one independent recurrence per (batch, channel) pair; the state (N values) lives in
  a small buffer, so nothing of size (B, D, N, L) is ever allocated.
- The backward saves nothing from the forward but the inputs. Per channel it replays the recurrence
  into two (L, N) scratch buffers (states and decays), then walks back in time. Scratch memory is
  O(threads * L * N), independent of the channel count.
- dB and dC are sums over the channels of a group, so each thread accumulates into its own
  (B, G, L, N) buffer and torch sums them.
- B and C are transposed to (B, G, L, N) before the kernels so the inner loop over states is contiguous.
- The step size dt = softplus(delta + bias) and the sigmoid of its backward are computed by torch
  (vectorised), so the kernels only run the recurrence.
- Arithmetic is fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 inputs (used by gradcheck).
- Work is split into contiguous channel ranges run on `torch.get_num_threads()` Python threads; the
  kernels release the GIL. No state is shared between calls, so concurrent calls are safe.

numba (a dependency of sr4) is imported on first use and the kernels compile on their first call (then load from
the on-disk cache), so importing sr4 never compiles anything. Every call is normalised to contiguous arrays of
fixed rank and always passes D (zeros when absent), so each kernel has at most two compiled
signatures (float32 and float64).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from sr4.networks.scan.args import ScanArgs, scan_function


def _kernels() -> ModuleType:
    """The kernel module, imported (with numba) on the first scan."""
    from sr4.networks.scan import numba_kernels

    return numba_kernels


def _run_split(fn: Callable[[int, int, int], None], total: int, parts: int) -> None:
    """Call fn(part, lo, hi) on `parts` contiguous ranges of range(total): part 0 in the calling thread,
    the others on worker threads (the kernels release the GIL)."""
    bounds = [total * i // parts for i in range(parts + 1)]
    if parts == 1:
        fn(0, 0, total)
        return
    with ThreadPoolExecutor(max_workers=parts - 1) as pool:
        futures = [pool.submit(fn, i, bounds[i], bounds[i + 1]) for i in range(1, parts)]
        fn(0, bounds[0], bounds[1])
        for future in futures:
            future.result()  # re-raises a kernel error in the caller


# Below this many state updates (B * D * L * N) starting threads costs more than it saves.
_MIN_PARALLEL_WORK = 1 << 17


def _num_parts(total: int, work: int) -> int:
    if work < _MIN_PARALLEL_WORK:
        return 1
    return max(1, min(total, torch.get_num_threads()))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# torch.nn.functional.softplus's default threshold, as in mamba_ssm: above it softplus(x) is x.
SOFTPLUS_THRESHOLD = 20.0


def _prepare(u, delta, A, B, C, D, delta_bias, softplus, dtype):
    """Contiguous tensors in the compute dtype (B and C as (B, G, L, N)), the step size dt and the
    pre-activation x = delta + bias (None without softplus)."""
    x = delta.detach().to(dtype)
    if delta_bias is not None:
        x = x + delta_bias.detach().to(dtype)[None, :, None]
    dt = F.softplus(x, threshold=SOFTPLUS_THRESHOLD) if softplus else x
    tensors = (
        u.detach().to(dtype).contiguous(),
        dt.contiguous(),
        A.detach().to(dtype).contiguous(),
        B.detach().to(dtype).transpose(2, 3).contiguous(),
        C.detach().to(dtype).transpose(2, 3).contiguous(),
        torch.zeros(A.shape[0], dtype=dtype) if D is None else D.detach().to(dtype).contiguous(),
    )
    return tensors, (x if softplus else None)


class SelectiveScanNumba(torch.autograd.Function):
    """Autograd wrapper: forward and backward both run the numba kernels."""

    @staticmethod
    def forward(ctx: Any, u, delta, A, B, C, D, delta_bias, delta_softplus):
        dtype = _compute_dtype(u.dtype)
        softplus = bool(delta_softplus)
        tensors, _ = _prepare(u, delta, A, B, C, D, delta_bias, softplus, dtype)
        arrs = [t.numpy() for t in tensors]  # views: `tensors` keeps the memory alive
        y = torch.empty(u.shape, dtype=dtype)
        y_arr = y.numpy()
        kernels = _kernels()
        pairs = u.shape[0] * u.shape[1]
        parts = _num_parts(pairs, u.numel() * A.shape[1])
        _run_split(lambda _, lo, hi: kernels.scan_forward(*arrs, y_arr, lo, hi), pairs, parts)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus = softplus
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        dtype = _compute_dtype(u.dtype)
        tensors, x = _prepare(u, delta, A, B, C, D, delta_bias, ctx.delta_softplus, dtype)
        arrs = [t.numpy() for t in tensors]
        kernels = _kernels()
        nb, dim, length = u.shape
        groups, nstate = B.shape[1], A.shape[1]
        nblocks = _num_parts(dim, u.numel() * nstate)
        du = torch.empty(u.shape, dtype=dtype)
        ddt = torch.empty(u.shape, dtype=dtype)
        dA = torch.empty(A.shape, dtype=dtype)
        dB_parts = torch.zeros(nblocks, nb, groups, length, nstate, dtype=dtype)
        dC_parts = torch.zeros(nblocks, nb, groups, length, nstate, dtype=dtype)
        dD = torch.empty(dim, dtype=dtype)
        dy_arr = dy.detach().to(dtype).contiguous().numpy()
        outs = [t.numpy() for t in (du, ddt, dA)]
        dB_arr, dC_arr, dD_arr = dB_parts.numpy(), dC_parts.numpy(), dD.numpy()

        def work(part: int, lo: int, hi: int) -> None:
            kernels.scan_backward(*arrs, dy_arr, *outs, dB_arr[part], dC_arr[part], dD_arr, lo, hi)

        _run_split(work, dim, nblocks)
        # Chain dt = softplus(delta + bias): softplus' = sigmoid below the threshold, 1 above.
        ddelta = ddt if x is None else ddt * torch.where(x > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(x))
        return (
            du.to(u.dtype),
            ddelta.to(delta.dtype),
            dA.to(A.dtype),
            dB_parts.sum(0).transpose(2, 3).to(B.dtype),
            dC_parts.sum(0).transpose(2, 3).to(C.dtype),
            None if D is None else dD.to(D.dtype),
            None if delta_bias is None else ddelta.sum((0, 2)).to(delta_bias.dtype),
            None,
        )


def numba_scan(args: ScanArgs) -> torch.Tensor:
    """Selective scan on CPU tensors with the numba kernels (differentiable in every tensor argument)."""
    if args.u.device.type != "cpu":
        raise RuntimeError(f"selective_scan backend 'numba' needs CPU tensors, got tensors on {args.u.device}")
    # (B, N, L) is one group; the view keeps autograd's gradient in the caller's shape.
    return SelectiveScanNumba.apply(args.u, args.delta, args.A, args.B4, args.C4, args.D, args.delta_bias,
                                    args.delta_softplus)


#: the numba scan with mamba_ssm's signature (arguments checked).
selective_scan_numba = scan_function(numba_scan)
