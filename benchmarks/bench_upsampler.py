"""Whole-network speed on CPU: sr4's MambaIRv2 (scan backend 'auto') against a slow-scan baseline, side by side.

    python benchmarks/bench_upsampler.py --official /path/to/MambaIR   # baseline: the official code
    python benchmarks/bench_upsampler.py                               # baseline: sr4 with backend='reference'

The network is classic-S x4 (embed 132, depths [4]*6, heads [4]*6, window 16, inner_rank 64,
num_tokens 128, mlp_ratio 2, d_state 16) with random weights, on a 64x64 input. Goal: >= 10x.

--official PATH is a local clone of csguoh/MambaIR. Its `basicsr/archs/mambairv2_arch.py` is loaded
by file path at run time (nothing of it is in this repository) with stand-in modules for what it
imports: `mamba_ssm.ops.selective_scan_interface.selective_scan_fn` becomes sr4's
`selective_scan_reference` (the same maths as mamba_ssm's `selective_scan_ref`, which is what the
official code can run on a CPU), `basicsr.archs.arch_util` / `basicsr.utils.registry` become small
stand-ins, and `einops` is used when installed, else a stand-in for the one pattern kind the file
needs. The official model gets sr4's weights, and both run with the same seed, so the outputs
must agree (the maximum difference is printed).

Runs are interleaved (baseline, sr4, baseline, ...); the best time of each is compared. The scan backend
is chosen through the model's `scan_backend` argument/attribute. One more sr4 pass under torch.profiler
times the scan calls alone (the `sr4::selective_scan` ranges) to show how much of the network time is the scan.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

CLASSIC_S_X4 = dict(
    upscale=4, in_chans=3, img_size=64, img_range=1.0, window_size=16, embed_dim=132, d_state=16,
    depths=[4] * 6, num_heads=[4] * 6, inner_rank=64, num_tokens=128, mlp_ratio=2.0,
    convffn_kernel_size=5, resi_connection="1conv", upsampler="pixelshuffle",
)


# ------------------------------------------------------------------------------ official code loader


def _einops_standin() -> types.ModuleType:
    """`repeat` for patterns that only add named axes ("d n -> r d n", r=3); nothing else."""
    module = types.ModuleType("einops")

    def repeat(tensor: torch.Tensor, pattern: str, **sizes: int) -> torch.Tensor:
        lhs, rhs = (side.split() for side in pattern.split("->"))
        if "(" in pattern or [a for a in rhs if a in lhs] != lhs:
            raise NotImplementedError(f"einops stand-in cannot do {pattern!r}: pip install einops")
        view = [tensor.shape[lhs.index(a)] if a in lhs else 1 for a in rhs]
        shape = [tensor.shape[lhs.index(a)] if a in lhs else sizes[a] for a in rhs]
        return tensor.reshape(view).expand(shape).contiguous()

    def rearrange(*_args, **_kwargs):
        raise NotImplementedError("einops stand-in has no rearrange: pip install einops")

    module.repeat, module.rearrange = repeat, rearrange
    return module


def _standin_modules(scan: Callable[..., torch.Tensor]) -> dict[str, types.ModuleType]:
    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        if z is not None or return_last_state:
            raise NotImplementedError("stand-in selective_scan_fn: z and return_last_state are not supported")
        return scan(u, delta, A, B, C, D, delta_bias, delta_softplus)

    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = interface.selective_scan_ref = selective_scan_fn

    arch_util = types.ModuleType("basicsr.archs.arch_util")
    arch_util.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    arch_util.trunc_normal_ = nn.init.trunc_normal_

    class _Registry:
        def register(self, obj=None):
            return obj if obj is not None else (lambda o: o)

    registry = types.ModuleType("basicsr.utils.registry")
    registry.ARCH_REGISTRY = _Registry()
    modules = {name: types.ModuleType(name) for name in ("mamba_ssm", "mamba_ssm.ops", "basicsr",
                                                         "basicsr.archs", "basicsr.utils")}
    modules.update({interface.__name__: interface, arch_util.__name__: arch_util, registry.__name__: registry})
    if importlib.util.find_spec("einops") is None:
        modules["einops"] = _einops_standin()
    return modules


def load_official_class(clone: Path, scan: Callable[..., torch.Tensor]) -> type[nn.Module]:
    """The official MambaIRv2 class from a csguoh/MambaIR clone, with stand-ins for its imports."""
    arch = clone / "basicsr" / "archs" / "mambairv2_arch.py"
    if not arch.is_file():
        raise SystemExit(f"--official {clone}: {arch} does not exist (expected a clone of csguoh/MambaIR)")
    standins = _standin_modules(scan)
    saved = {name: sys.modules.get(name) for name in standins}
    sys.modules.update(standins)
    try:
        spec = importlib.util.spec_from_file_location("mambairv2_official_bench", arch)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:  # the stand-ins stay referenced by the loaded module only
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module.MambaIRv2


# ------------------------------------------------------------------------------ benchmark


def timed(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[float, float, torch.Tensor]:
    """(wall seconds, CPU seconds of the whole process, output)."""
    torch.manual_seed(seed)  # same Gumbel routing noise for both networks
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.no_grad():
        y = model(x)
    return time.perf_counter() - start, time.process_time() - cpu_start, y


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, default=None, help="local clone of csguoh/MambaIR")
    parser.add_argument("--size", type=int, default=64, help="input height and width (LR pixels)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops for sr4")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sr4.networks.mambairv2 import MambaIRv2
    from sr4.networks.scan import selective_scan_reference

    torch.manual_seed(args.seed)
    sr4_model = MambaIRv2(**CLASSIC_S_X4, scan_backend="auto").eval()
    if args.official is not None:
        official_cls = load_official_class(args.official, selective_scan_reference)
        baseline = official_cls(**CLASSIC_S_X4).eval()  # the official code: no scan_backend argument
        baseline.load_state_dict(sr4_model.state_dict(), strict=True)
        baseline_name = f"official MambaIRv2 ({args.official}) with the PyTorch reference scan"

        def run_baseline(x: torch.Tensor) -> tuple[float, float, torch.Tensor]:
            return timed(baseline, x, args.seed)
    else:
        baseline_name = ("sr4 MambaIRv2 with backend='reference' -- NOT the official code "
                         "(pass --official PATH to compare against it)")

        def run_baseline(x: torch.Tensor) -> tuple[float, float, torch.Tensor]:
            sr4_model.scan_backend = "reference"
            try:
                return timed(sr4_model, x, args.seed)
            finally:
                sr4_model.scan_backend = "auto"

    print(f"classic-S x4, input 1x3x{args.size}x{args.size}; {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print(f"baseline: {baseline_name}")
    print("sr4:      sr4 MambaIRv2 with backend='auto'")

    small = torch.rand(1, 3, 16, 16)
    start = time.perf_counter()
    timed(sr4_model, small, args.seed)
    print(f"sr4 warm-up on 16x16 (numba compile or cache load): {time.perf_counter() - start:.2f} s")
    run_baseline(small)

    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 1))
    base_times, sr4_times, base_cpu, sr4_cpu = [], [], [], []
    for i in range(args.repeats):
        t_base, c_base, y_base = run_baseline(x)
        t_sr4, c_sr4, y_sr4 = timed(sr4_model, x, args.seed)
        base_times.append(t_base)
        sr4_times.append(t_sr4)
        base_cpu.append(c_base)
        sr4_cpu.append(c_sr4)
        print(f"run {i + 1}: wall baseline {t_base:7.2f} s  sr4 {t_sr4:6.2f} s  ratio {t_base / t_sr4:5.1f}x | "
              f"CPU baseline {c_base:7.2f} s  sr4 {c_sr4:6.2f} s  ratio {c_base / c_sr4:5.1f}x")
    diff = (y_base - y_sr4).abs().max().item()
    print(f"outputs {tuple(y_sr4.shape)}, max |sr4 - baseline| = {diff:.2e}")

    from torch.profiler import ProfilerActivity, profile

    from sr4.networks.blocks import SCAN_PROFILE_NAME

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t_total, c_total, _ = timed(sr4_model, x, args.seed)
    events = prof.key_averages()
    scan_s = sum(e.cpu_time_total for e in events if e.key == SCAN_PROFILE_NAME) / 1e6
    print(f"sr4 breakdown (one more run, under torch.profiler): total {t_total:.2f} s wall / {c_total:.2f} s CPU, "
          f"selective scan calls {scan_s:.2f} s ({100 * scan_s / t_total:.0f}% of wall), rest {t_total - scan_s:.2f} s")
    if args.profile:
        print(events.table(sort_by="self_cpu_time_total", row_limit=20))

    ratio = min(base_times) / min(sr4_times)
    cpu_ratio = min(base_cpu) / min(sr4_cpu)
    print(f"best wall: baseline {min(base_times):.2f} s, sr4 {min(sr4_times):.2f} s, speed-up {ratio:.1f}x; "
          f"best CPU time: baseline {min(base_cpu):.2f} s, sr4 {min(sr4_cpu):.2f} s, ratio {cpu_ratio:.1f}x")
    print(f"goal >= 10x (wall): {'met' if ratio >= 10 else 'NOT met'}; load average now {os.getloadavg()[0]:.1f} "
          "(on a loaded machine prefer --threads 1: OpenMP threads spin while waiting for descheduled peers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
