"""Selective scan speed on CPU: the numba backend against the PyTorch reference loop, measured side by side.

    python benchmarks/bench_scan.py                      # MambaIRv2-B sizes: hidden 348, d_state 16, L 4096
    python benchmarks/bench_scan.py --length 1024 --repeats 5 --no-backward

Prints the best and median wall time of each backend for the forward pass and for forward+backward,
and the ratios reference/numba (goal: forward >= 8x). Runs are interleaved (reference, numba,
reference, ...) so that load from other processes hits both alike; the best time is the least disturbed.
CPU time (all threads of the process) is printed too: on a loaded machine it is the steadier measure.
The first numba call (compilation or cache load) is timed separately and not counted.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from sr4.networks.scan import selective_scan, selective_scan_reference


def make_inputs(batch: int, hidden: int, d_state: int, length: int, groups: int, seed: int) -> dict:
    """Inputs distributed like MambaIRv2's at initialisation (S4D-real A, dt in [1e-3, 0.1])."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(hidden, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return {
        "u": torch.randn(batch, hidden, length, generator=g),
        "delta": torch.randn(batch, hidden, length, generator=g) * 0.5,
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(hidden, 1),
        "B": torch.randn(batch, groups, d_state, length, generator=g),
        "C": torch.randn(batch, groups, d_state, length, generator=g),
        "D": torch.ones(hidden),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
    }


def run_once(fn: Callable, inputs: dict, backward: bool, grad_out: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process) of one call."""
    leaves = {k: v.detach().clone().requires_grad_(backward) for k, v in inputs.items()}
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.set_grad_enabled(backward):
        y = fn(**leaves, delta_softplus=True)
        if backward:
            y.backward(grad_out)
    return time.perf_counter() - start, time.process_time() - cpu_start


def numba_scan(**kwargs) -> torch.Tensor:
    return selective_scan(**kwargs, backend="numba")


def compare(inputs: dict, backward: bool, repeats: int) -> tuple[list[tuple[float, float]], ...]:
    grad_out = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1))
    ref_times, numba_times = [], []
    for _ in range(repeats):
        ref_times.append(run_once(selective_scan_reference, inputs, backward, grad_out))
        numba_times.append(run_once(numba_scan, inputs, backward, grad_out))
    return ref_times, numba_times


def report(label: str, ref_times: list[tuple[float, float]], numba_times: list[tuple[float, float]]) -> float:
    """Print wall and CPU times; return the best-wall speed-up."""
    for kind, i in (("wall", 0), ("CPU", 1)):
        ref = [t[i] for t in ref_times]
        nb = [t[i] for t in numba_times]
        print(f"{label:<17}{kind:>5}: reference best {min(ref):8.3f} s  median {statistics.median(ref):8.3f} s | "
              f"numba best {min(nb):7.3f} s  median {statistics.median(nb):7.3f} s | "
              f"ratio best {min(ref) / min(nb):6.1f}x  median {statistics.median(ref) / statistics.median(nb):6.1f}x")
    return min(t[0] for t in ref_times) / min(t[0] for t in numba_times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=348, help="channels D (MambaIRv2-B: 174 * 2)")
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--length", type=int, default=4096, help="sequence length L (64x64 pixels: 4096)")
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    inputs = make_inputs(args.batch, args.hidden, args.d_state, args.length, args.groups, args.seed)
    print(f"selective scan B={args.batch} D={args.hidden} N={args.d_state} L={args.length} G={args.groups}; "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")

    start = time.perf_counter()
    small = make_inputs(1, 4, args.d_state, 8, 1, 0)
    small = {k: v.requires_grad_() for k, v in small.items()}
    numba_scan(**small, delta_softplus=True).sum().backward()
    print(f"numba first call (compile or load cache, forward+backward): {time.perf_counter() - start:.2f} s")

    with torch.no_grad():
        y_ref = selective_scan_reference(**inputs, delta_softplus=True)
        y_nb = numba_scan(**inputs, delta_softplus=True)
    err = (y_ref - y_nb).abs().max().item() / y_ref.abs().max().item()
    print(f"max |numba - reference| / max |reference| = {err:.2e}")

    forward_ratio = report("forward", *compare(inputs, False, args.repeats))
    if not args.no_backward:
        report("forward+backward", *compare(inputs, True, args.repeats))
    print(f"goal forward >= 8x: {'met' if forward_ratio >= 8 else 'NOT met'} ({forward_ratio:.1f}x, best of "
          f"{args.repeats}; load average now {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
