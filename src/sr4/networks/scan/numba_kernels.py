"""numba kernels of the CPU selective scan (imported only by `numba_backend` on first use).

Each kernel is serial, releases the GIL (`nogil`) and works on a range of channels, so the caller
runs one range per thread. Serial kernels compile several times faster than `parallel=True` ones,
and plain Python threads need no numba threading layer (the "workqueue" layer is not thread-safe).
Decorating does not compile: compilation happens on the first call and is cached on disk.

The step size dt = softplus(delta + bias) and its derivative are computed by the caller with torch
(vectorised; a per-step log1p/exp here would cost more than the 16 state updates).

Array layouts (all C-contiguous, one float dtype per call):
u, dt, y, dy, du, ddt (B, D, L); A, dA (D, N); Bt, Ct, dBt, dCt (B, G, L, N); Dv, dD (D,).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# Reassociation lets LLVM vectorise the sums over states; no nnan/ninf, so inf/nan propagate as in torch.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

# ---------------------------------------------------------------------------------------------- exp
# Without Intel SVML, LLVM turns np.exp into one libm call per element and cannot vectorise the loop
# over states, which then dominates the scan. exp_f32 is branch-free (selects only), so the loop
# vectorises: exp(z) = 2^k * exp(r), k = round(z / ln 2), |r| <= ln2 / 2, exp(r) by its Taylor series
# to degree 7 (truncation error < 6e-9, below fp32 rounding). fp64 keeps np.exp (used by gradcheck).
_F32 = np.float32
_LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693359375)  # few mantissa bits: k * _LN2_HI is exact for |k| < 2^9
_LN2_LO = _F32(-2.1219444005469057e-4)  # ln 2 - _LN2_HI
_EXP_LO = _F32(-87.0)  # below: result is 0 (exp(-87) is near the smallest normal fp32)
_EXP_HI = _F32(88.0)  # above: inf
_TAYLOR = tuple(_F32(1.0 / f) for f in (1, 1, 2, 6, 24, 120, 720, 5040))
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7 = _TAYLOR
_HALF = _F32(0.5)
_ZERO = _F32(0.0)
_INF = _F32(np.inf)


@intrinsic
def _bits_as_f32(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (an LLVM bitcast, vectorisable)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


def fast_exp(z):  # pragma: no cover - replaced by the overload inside numba code
    """exp(z); inside numba kernels: vectorisable exp for float32, np.exp otherwise."""
    return np.exp(z)


@overload(fast_exp, inline="always", fastmath=_FASTMATH)  # type: ignore[call-arg]
def _fast_exp_overload(z):
    if z == types.float32:

        def impl(z):
            zc = min(max(z, _EXP_LO), _EXP_HI)
            k = np.floor(zc * _LOG2E + _HALF)
            r = zc - k * _LN2_HI - k * _LN2_LO
            p = _C0 + r * (_C1 + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
            res = p * _bits_as_f32((np.int64(k) + 127) << 23)
            res = _ZERO if z < _EXP_LO else res
            res = _INF if z > _EXP_HI else res
            return z if z != z else res  # nan in, nan out

        return impl
    return lambda z: np.exp(z)


def zero_of(arr):  # pragma: no cover - replaced by the overload inside numba code
    """A zero of arr's dtype (keeps fp32 sums in fp32 so they vectorise at full width)."""
    return arr.dtype.type(0)


@overload(zero_of, inline="always")
def _zero_of_overload(arr):
    if arr.dtype == types.float32:
        return lambda arr: _ZERO
    return lambda arr: 0.0



@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def scan_forward(u, dt, A, Bt, Ct, Dv, y, pair_lo, pair_hi):
    """y for the flattened (batch, channel) pairs pair_lo..pair_hi-1; dt is the step size (softplus applied)."""
    nd, length = u.shape[1], u.shape[2]
    nstate = A.shape[1]
    per_group = nd // Bt.shape[1]
    h = np.empty(nstate, dtype=u.dtype)
    dec = np.empty(nstate, dtype=u.dtype)
    for pair in range(pair_lo, pair_hi):
        b = pair // nd
        d = pair % nd
        g = d // per_group
        a_row = A[d]
        skip = Dv[d]
        h[:] = 0.0
        for t in range(length):
            ut = u[b, d, t]
            dt_t = dt[b, d, t]
            dtu = dt_t * ut
            b_t = Bt[b, g, t]
            c_t = Ct[b, g, t]
            # Two loops: the exp loop vectorises better on its own.
            for n in range(nstate):
                dec[n] = fast_exp(dt_t * a_row[n])
            acc = zero_of(u)
            for n in range(nstate):
                hn = dec[n] * h[n] + dtu * b_t[n]
                h[n] = hn
                acc += hn * c_t[n]
            y[b, d, t] = acc + skip * ut


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def scan_backward(u, dt, A, Bt, Ct, Dv, dy, du, ddt, dA, dBt, dCt, dD, d_lo, d_hi):
    """Gradients for channels d_lo..d_hi-1 (all batches); ddt is the gradient of the step size dt.

    du, ddt and the rows d_lo..d_hi-1 of dA, dD are written only by this call; dBt and dCt must be
    this call's own accumulators (zero-initialised), summed by the caller over calls.
    """
    nb, nd, length = u.shape
    nstate = A.shape[1]
    per_group = nd // Bt.shape[1]
    # hs[t + 1] is the state after step t (hs[0] = 0); decays[t] the decay of step t, with a zero
    # row at the end so the reverse walk needs no boundary test. Both are replayed per channel, so
    # scratch memory is O(L * N) whatever the channel count.
    hs = np.zeros((length + 1, nstate), dtype=u.dtype)
    decays = np.zeros((length + 1, nstate), dtype=u.dtype)
    dh = np.empty(nstate, dtype=u.dtype)
    dA_row = np.empty(nstate, dtype=u.dtype)
    for d in range(d_lo, d_hi):
        g = d // per_group
        a_row = A[d]
        skip = Dv[d]
        dA_row[:] = 0.0
        acc_d = 0.0
        for b in range(nb):
            for t in range(length):
                dt_t = dt[b, d, t]
                dtu = dt_t * u[b, d, t]
                b_t = Bt[b, g, t]
                dec_t = decays[t]
                h_prev = hs[t]
                h_next = hs[t + 1]
                for n in range(nstate):
                    dec_t[n] = fast_exp(dt_t * a_row[n])
                for n in range(nstate):
                    h_next[n] = dec_t[n] * h_prev[n] + dtu * b_t[n]
            # Reverse walk: dh is dLoss/dh_t; the future's share arrives through decays[t + 1].
            dh[:] = 0.0
            for t in range(length - 1, -1, -1):
                gt = dy[b, d, t]
                ut = u[b, d, t]
                dt_t = dt[b, d, t]
                dtu = dt_t * ut
                acc_d += gt * ut
                b_t = Bt[b, g, t]
                c_t = Ct[b, g, t]
                dec_t = decays[t]
                dec_next = decays[t + 1]
                h_prev = hs[t]
                h_t = hs[t + 1]
                db_t = dBt[b, g, t]
                dc_t = dCt[b, g, t]
                ddt_t = zero_of(u)
                du_t = zero_of(u)
                for n in range(nstate):
                    dhn = dh[n] * dec_next[n] + gt * c_t[n]
                    dh[n] = dhn
                    dc_t[n] += gt * h_t[n]
                    # decay = exp(dt * A), so dLoss/d(dt * A) = dh * h_prev * decay.
                    dlog = dhn * h_prev[n] * dec_t[n]
                    ddt_t += dlog * a_row[n] + dhn * b_t[n] * ut
                    dA_row[n] += dlog * dt_t
                    db_t[n] += dhn * dtu
                    du_t += dhn * b_t[n]
                du[b, d, t] = du_t * dt_t + skip * gt
                ddt[b, d, t] = ddt_t
        for n in range(nstate):
            dA[d, n] = dA_row[n]
        dD[d] = acc_d
