"""The arguments of one selective scan, in mamba_ssm's conventions, checked once per call.

Shapes: u, delta (B, D, L); A (D, N); Bs, Cs (B, G, N, L) or (B, N, L) with D divisible by G (channel d
uses group d // (D // G)); Ds, delta_bias (D,). For each channel d and state n:

    dt_t = softplus(delta_t + bias)                  (when delta_softplus; softplus(x) = x above 20)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t  = <h_t, C_t> + D * u_t

The recurrence is the one of ``selective_scan_ref`` in state-spaces/mamba
(``mamba_ssm/ops/selective_scan_interface.py``), which MambaIRv2's ASSM calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ScanArgs:
    """One call's tensors. Build it with `ScanArgs.checked`, which raises ValueError naming the argument whose
    shape, dtype or device does not fit; every backend then takes the arguments as they are."""

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None = None
    delta_bias: torch.Tensor | None = None
    delta_softplus: bool = False

    @classmethod
    def checked(cls, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                delta_softplus: bool = False) -> ScanArgs:
        args = cls(u, delta, A, B, C, D, delta_bias, bool(delta_softplus))
        args.check()
        return args

    @property
    def B4(self) -> torch.Tensor:
        """B as (batch, groups, d_state, length)."""
        return self.B.unsqueeze(1) if self.B.dim() == 3 else self.B

    @property
    def C4(self) -> torch.Tensor:
        """C as (batch, groups, d_state, length)."""
        return self.C.unsqueeze(1) if self.C.dim() == 3 else self.C

    def check(self) -> None:
        """Raise ValueError naming the argument whose shape or dtype does not fit mamba_ssm's conventions."""
        u, A = self.u, self.A
        if u.dim() != 3:
            raise ValueError(f"selective_scan: u must have shape (batch, dim, length), got {tuple(u.shape)}")
        batch, dim, length = u.shape
        if self.delta.shape != u.shape:
            raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got "
                             f"{tuple(self.delta.shape)}")
        if A.dim() != 2 or A.shape[0] != dim:
            raise ValueError(f"selective_scan: A must have shape ({dim}, d_state), got {tuple(A.shape)}")
        if A.is_complex():
            raise ValueError("selective_scan: complex A is not supported")
        nstate = A.shape[1]
        for name, x in (("B", self.B), ("C", self.C)):
            if x.dim() not in (3, 4):
                raise ValueError(f"selective_scan: {name} must have shape (batch, groups, d_state, length) or "
                                 f"(batch, d_state, length), got {tuple(x.shape)}")
            x4 = x.unsqueeze(1) if x.dim() == 3 else x
            groups = x4.shape[1]
            if x4.shape[0] != batch or x4.shape[2] != nstate or x4.shape[3] != length or groups == 0:
                raise ValueError(f"selective_scan: {name} must have shape ({batch}, groups, {nstate}, {length}), "
                                 f"got {tuple(x.shape)}")
            if dim % groups:
                raise ValueError(f"selective_scan: {name} has {groups} groups, which does not divide dim {dim}")
        for name, t in (("D", self.D), ("delta_bias", self.delta_bias)):
            if t is not None and tuple(t.shape) != (dim,):
                raise ValueError(f"selective_scan: {name} must have shape ({dim},), got {tuple(t.shape)}")
        for name, t in (("u", u), ("delta", self.delta), ("A", A), ("B", self.B), ("C", self.C), ("D", self.D),
                        ("delta_bias", self.delta_bias)):
            if t is not None and not t.is_floating_point():
                raise ValueError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")
            if t is not None and t.device != u.device:
                raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")


ScanImpl = Callable[..., torch.Tensor]


def scan_function(impl: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A backend's public function with mamba_ssm's signature, ``(u, delta, A, B, C, D=None, delta_bias=None,
    delta_softplus=False, **options)``, around ``impl(args: ScanArgs, **options)``: the arguments are checked here,
    once; `sr4.networks.scan.selective_scan` checks them itself and calls ``impl`` directly."""

    @functools.wraps(impl)
    def entry(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
              **options: Any) -> torch.Tensor:
        return impl(ScanArgs.checked(u, delta, A, B, C, D, delta_bias, delta_softplus), **options)

    return entry
