"""CPU threads: sr4's thread policy against one thread and torch's default (all cores), idle and beside a CPU hog.

    python benchmarks/bench_threads.py                         # default model, 128x128 input, 5 rounds
    python benchmarks/bench_threads.py --rounds 8 --calls 3
    python benchmarks/bench_threads.py --stages u,m            # + one real-width SD3 transformer block

Three worker processes stay alive for the whole run, one per setting:
- "1 thread": OMP_NUM_THREADS=1;
- "all threads": torch's default (one thread per core, OpenMP's default spin-then-sleep waiting);
- "sr4": the policy `sr4` applies (`sr4.utils.threads.apply_thread_policy`, called before torch is imported,
  exactly as the command line does).
Each starts from this process's environment less OMP_NUM_THREADS, OMP_WAIT_POLICY, GOMP_SPINCOUNT and
SR4_THREADS. Each measurement is a warm call (model loaded, first call done). Rounds alternate the cases
(idle, then beside a hog: one extra process running a busy loop, started and stopped by this script) and
rotate the order of the settings, so that load from other processes hits all of them alike; the best call
of all rounds is the least disturbed and is what the ratios use (medians are printed too).

Goal: in each case sr4's setting is within 1.3x of the better of 1 thread and all threads.

Stage u: sr4's bundled default model (MambaIRv2-Light x4) on a 128x128 image through `sr4.Upscaler`.
Stage m: the SD3-medium transformer at its real width with `--m-layers` of its 24 blocks (random weights,
fp32), on a 32x32 latent with TSD-SR's 333 prompt tokens; needs diffusers (pip install -e ".[refiner]").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("1 thread", "all threads", "sr4")
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SR4_THREADS")
GOAL = 1.3


# ----------------------------------------------------------------------------- worker


def _worker(setting: str, stage: str, m_layers: int) -> None:
    if setting == "sr4":
        from sr4.utils.threads import apply_thread_policy

        apply_thread_policy()
    import torch

    torch.manual_seed(0)
    if stage == "u":
        from sr4.pipeline.upscaler import Upscaler

        up = Upscaler(tile=None)
        x = torch.rand(1, 3, 128, 128)

        def call() -> None:
            up(x)
    else:
        from diffusers import SD3Transformer2DModel

        net = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=m_layers,
                                    attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                    caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                    pos_embed_max_size=192).eval()
        z, text, pooled = torch.randn(1, 16, 32, 32), torch.randn(1, 333, 4096), torch.randn(1, 2048)
        t = torch.tensor([999.0])

        def call() -> None:
            with torch.no_grad():
                net(hidden_states=z, encoder_hidden_states=text, pooled_projections=pooled, timestep=t)
    call()
    call()
    print(json.dumps({"ready": True, "threads": torch.get_num_threads(),
                      "wait": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)")}), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)


# ----------------------------------------------------------------------------- driver


class Worker:
    def __init__(self, setting: str, stage: str, m_layers: int):
        env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        if setting == "1 thread":
            env["OMP_NUM_THREADS"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", setting, "--stages", stage,
                                      "--m-layers", str(m_layers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.info = json.loads(self.proc.stdout.readline())

    def time_calls(self, calls: int) -> list[float]:
        self.proc.stdin.write(f"{calls}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def start_hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_stage(stage: str, rounds: int, calls: int, m_layers: int) -> dict[str, dict[str, list[float]]]:
    workers = {s: Worker(s, stage, m_layers) for s in SETTINGS}
    print(f"stage {stage}: " + "; ".join(f"{s}: {w.info['threads']} threads, wait {w.info['wait']}"
                                         for s, w in workers.items()), flush=True)
    times: dict[str, dict[str, list[float]]] = {case: {s: [] for s in SETTINGS} for case in ("idle", "hog")}
    try:
        for r in range(rounds):
            for case in ("idle", "hog"):
                hog = start_hog() if case == "hog" else None
                try:
                    time.sleep(0.3)
                    order = SETTINGS[r % 3:] + SETTINGS[:r % 3]
                    for setting in order:
                        times[case][setting] += workers[setting].time_calls(calls)
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
            print(f"  round {r + 1}/{rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for w in workers.values():
            w.close()
    return times


def report(stage: str, times: dict[str, dict[str, list[float]]]) -> bool:
    ok = True
    print(f"\nstage {stage}: best (median) seconds per warm call")
    print(f"{'case':6} {'1 thread':>17} {'all threads':>17} {'sr4':>17}   sr4 / better of 1 and all (goal <= {GOAL})")
    for case, by_setting in times.items():
        best = {s: min(v) for s, v in by_setting.items()}
        cells = " ".join(f"{best[s]:7.3f} ({statistics.median(by_setting[s]):6.3f})" for s in SETTINGS)
        ratio = best["sr4"] / min(best["1 thread"], best["all threads"])
        ok &= ratio <= GOAL
        print(f"{case:6} {cells}   {ratio:.2f}x {'ok' if ratio <= GOAL else 'MISSED'}  "
              f"(all threads / 1 thread: {best['all threads'] / best['1 thread']:.2f}x)")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="alternating idle/hog rounds (default 5)")
    p.add_argument("--calls", type=int, default=3, help="timed calls per setting per round (default 3)")
    p.add_argument("--stages", default="u", help="u (default model), m (SD3 transformer blocks), or u,m")
    p.add_argument("--m-layers", type=int, default=1, help="SD3 transformer blocks for stage m (default 1 of 24)")
    p.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.stages, args.m_layers)
        return 0
    print(f"{os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable; load average {os.getloadavg()[0]:.1f} "
          f"at start. Other processes may share the machine: rounds alternate the cases and the settings, and the "
          f"best of {args.rounds} rounds x {args.calls} calls is compared.")
    ok = True
    for stage in args.stages.split(","):
        ok &= report(stage, run_stage(stage, args.rounds, args.calls, args.m_layers))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
