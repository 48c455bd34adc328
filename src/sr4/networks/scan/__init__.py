"""Selective scan (Mamba S6 recurrence), one direction, with mamba_ssm's argument conventions (see `args`).

Backends (`selective_scan(..., backend=...)`), each in its own module and listed once in `BACKEND_TABLE`:
- 'reference' (`reference`): a plain PyTorch step loop; the ground truth for the others.
- 'numba' (`numba_backend`): CPU kernels with forward and backward.
- 'cuda' (`mamba`): mamba_ssm's CUDA kernel, used only when mamba_ssm imports.
- 'chunked' (`chunked`): a PyTorch scan over chunks of steps, any device, inference.
- 'auto': 'cuda' for CUDA tensors when mamba_ssm imports, else 'chunked' with a one-time warning; 'numba' for
  CPU tensors; the reference elsewhere.
The arguments are checked once per call, here. Dispatch keeps no state besides cached imports, so concurrent
calls from several threads are safe. Importing this package imports neither numba nor mamba_ssm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sr4.networks.scan import chunked, mamba, numba_backend, reference
from sr4.networks.scan.args import ScanArgs
from sr4.networks.scan.reference import selective_scan_reference

__all__ = ["BACKENDS", "BACKEND_TABLE", "ScanArgs", "available_backends", "selective_scan", "selective_scan_reference"]


@dataclass(frozen=True)
class Backend:
    """One implementation: where it runs and, for an optional package, why it cannot run here ('' when it can)."""

    name: str
    run: Callable[[ScanArgs], torch.Tensor]
    device_types: tuple[str, ...] | None  # None: any device
    unavailable: Callable[[], str] = lambda: ""
    needs: str = ""  # the optional package, for the error when it is missing

    def runs_on(self, device: torch.device) -> bool:
        return (self.device_types is None or device.type in self.device_types) and not self.unavailable()


BACKEND_TABLE: dict[str, Backend] = {
    "reference": Backend("reference", reference.reference_scan, None),
    "chunked": Backend("chunked", chunked.chunked_scan, None),
    "numba": Backend("numba", numba_backend.numba_scan, ("cpu",)),
    "cuda": Backend("cuda", mamba.mamba_scan, ("cuda",), mamba.mamba_ssm_import_error,
                    "mamba_ssm with its CUDA extension"),
}
BACKENDS = ("auto", "reference", "numba", "cuda", "chunked")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the implementations usable for tensors on `device` (without compiling anything)."""
    device = torch.device(device)
    return [name for name in ("reference", "chunked", "numba", "cuda") if BACKEND_TABLE[name].runs_on(device)]


def _auto(device: torch.device) -> str:
    if device.type == "cuda":
        if BACKEND_TABLE["cuda"].runs_on(device):
            return "cuda"
        mamba.warn_no_mamba_ssm()
        return "chunked"
    return "numba" if device.type == "cpu" else "reference"


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

    All arithmetic is fp32 (fp64 for fp64 inputs); the result has u's dtype. An explicitly named backend that
    cannot run on these tensors raises RuntimeError; an unknown name raises ValueError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    args = ScanArgs.checked(u, delta, A, B, C, D, delta_bias, delta_softplus)
    name = _auto(u.device) if backend == "auto" else backend
    chosen = BACKEND_TABLE[name]
    if chosen.device_types is not None and u.device.type not in chosen.device_types:
        wanted = "CPU" if chosen.device_types == ("cpu",) else "CUDA"
        raise RuntimeError(f"selective_scan backend {name!r} needs {wanted} tensors, got tensors on {u.device}")
    why = chosen.unavailable()
    if why:
        raise RuntimeError(f"selective_scan backend {name!r} needs {chosen.needs} (import failed: {why})")
    return chosen.run(args)
