"""Time to first image: the whole `sr4 upscale` command against bare `import torch` + the network's own forward.

    python benchmarks/bench_startup.py                 # examples/astronaut_lr.png (128x128 -> 512x512), 5 rounds
    python benchmarks/bench_startup.py --rounds 8

Measured in one run, in fresh processes, rounds alternating so that load from other processes hits every
measurement alike (best of the rounds is reported, medians too):
- `python -c "import torch"`;
- the network's own forward: sr4's bundled default model on the example image, a warm call (best of 5) in a
  process that applies sr4's thread policy as the command does;
- `python -m sr4 upscale IMAGE -o TMP --overwrite` (what a user types; `sr4 upscale` is the same entry point);
- `python -m sr4 --help` and `python -m sr4 info`.
Goal: command <= 1.5 x (import torch + forward); `--help` and `info` well under a second.

Then where the command's time goes: one process that takes the command's steps with a clock between them,
and `python -X importtime` of the command (the largest imports). numba imports scipy when it is installed
(numba.np.linalg looks for BLAS), which a plain `pip install sr4` does not bring; when scipy is installed the
command is also timed with scipy hidden, as on such an install.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.5

# Runs `sr4` with scipy made unimportable (as on an install without it); argv follows.
HIDE_SCIPY = """
import importlib.abc, runpy, sys
class _NoScipy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "scipy" or name.startswith("scipy."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoScipy())
sys.argv = ["sr4", *sys.argv[1:]]
runpy.run_module("sr4", run_name="__main__", alter_sys=True)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    return time.perf_counter() - start


def _worker_forward(image: str) -> None:
    """Warm forward of the default model on `image` (best of 5), with sr4's thread policy."""
    from sr4.utils.threads import apply_thread_policy

    apply_thread_policy()
    import torch

    from sr4.image.io import read_image
    from sr4.models.bundled import load_default_upsampler

    net = load_default_upsampler()
    pixels = read_image(image).pixels
    x = torch.from_numpy(pixels[..., :3]).permute(2, 0, 1)[None].float() / 255.0
    times = []
    with torch.no_grad():
        for _ in range(6):
            start = time.perf_counter()
            net(x, generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)
    print(json.dumps(min(times[1:])))


def _worker_steps(image: str, out: str) -> None:
    """The command's steps in one process, with a clock between them (seconds since the interpreter started)."""
    marks = [("python start", time.perf_counter())]

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter()))

    from sr4.utils.threads import apply_thread_policy

    apply_thread_policy()
    import torch  # noqa: F401

    mark("import torch")
    import numba  # noqa: F401

    mark("import numba")
    from sr4.cli import upscale  # noqa: F401
    from sr4.image.io import read_image, write_image
    from sr4.pipeline.upscaler import Upscaler

    mark("import sr4 (PIL, tqdm, ...)")
    up = Upscaler()
    mark("load model (sha256, build)")
    data = read_image(image)
    mark("read image")
    result = up.process_image_data(data)
    mark("first image")
    write_image(out, result)
    mark("write image")
    up.process_image_data(data)
    mark("second image (warm)")
    print(json.dumps([(name, t - marks[i][1]) for i, (name, t) in enumerate(marks[1:])]))


def importtime(cmd: list[str], top: int) -> list[tuple[str, float]]:
    """Largest cumulative import times of top-level-ish packages in one run of `cmd` (python -X importtime)."""
    done = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, env=_env())
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) <= 3:  # packages imported directly or one level down
            rows.append((m.group(3), int(m.group(1)) / 1e6))
    best: dict[str, float] = {}
    for name, seconds in rows:
        best[name] = max(best.get(name, 0.0), seconds)
    return sorted(best.items(), key=lambda kv: -kv[1])[:top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=str(ROOT / "examples" / "astronaut_lr.png"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--worker", choices=["forward", "steps"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "forward":
        _worker_forward(args.image)
        return 0
    if args.worker == "steps":
        _worker_steps(args.image, args.out)
        return 0

    py = sys.executable
    try:
        import scipy  # noqa: F401

        has_scipy = True
    except ImportError:
        has_scipy = False
    with tempfile.TemporaryDirectory() as tmp:
        command = [py, "-m", "sr4", "upscale", args.image, "-o", tmp, "--overwrite"]
        forward_cmd = [py, __file__, "--worker", "forward", "--image", args.image]
        jobs = {
            "import torch": lambda: wall([py, "-c", "import torch"]),
            "forward": lambda: json.loads(subprocess.run(forward_cmd, capture_output=True, text=True, check=True,
                                                         env=_env()).stdout),
            "sr4 upscale": lambda: wall(command),
            "sr4 --help": lambda: wall([py, "-m", "sr4", "--help"]),
            "sr4 info": lambda: wall([py, "-m", "sr4", "info"]),
        }
        if has_scipy:
            jobs["sr4 upscale, scipy hidden"] = lambda: wall([py, "-c", HIDE_SCIPY, *command[3:]])
        print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start; image {args.image}. Other "
              f"processes may share the machine: {args.rounds} rounds, the order rotates each round, best of them "
              f"is used. PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')}.",
              flush=True)
        times: dict[str, list[float]] = {name: [] for name in jobs}
        names = list(jobs)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(jobs[name]())
            print(f"  round {r + 1}/{args.rounds}, load average {os.getloadavg()[0]:.1f}", flush=True)
        steps = json.loads(subprocess.run([py, __file__, "--worker", "steps", "--image", args.image,
                                           "--out", str(Path(tmp) / "steps.png")], capture_output=True, text=True,
                                          check=True, env=_env()).stdout)
        imports = importtime(command, 12)

    best = {name: min(v) for name, v in times.items()}
    print("\nwall seconds, best (median) of the rounds")
    for name, values in times.items():
        print(f"  {name:28} {best[name]:6.2f} ({statistics.median(values):5.2f})")
    base = best["import torch"] + best["forward"]
    ratio = best["sr4 upscale"] / base
    print(f"\nsr4 upscale / (import torch + forward) = {best['sr4 upscale']:.2f} / ({best['import torch']:.2f} + "
          f"{best['forward']:.2f}) = {ratio:.2f}x (goal <= {GOAL}): {'ok' if ratio <= GOAL else 'MISSED'}")
    if has_scipy:
        r2 = best["sr4 upscale, scipy hidden"] / base
        print(f"  with scipy hidden (a plain `pip install sr4`): {r2:.2f}x")
    for name in ("sr4 --help", "sr4 info"):
        print(f"{name}: {best[name]:.2f} s (goal: well under 1 s): {'ok' if best[name] < 0.8 else 'MISSED'}")
    print("\nwhere the command's time goes (one process, the command's steps with a clock between them):")
    for name, seconds in steps:
        print(f"  {name:30} {seconds:6.3f} s")
    first = dict(steps)
    print(f"  (first image - warm image = {first['first image'] - first['second image (warm)']:.3f} s: numba loading "
          "its cached kernels and the first calls of each op)")
    print("\nlargest imports of the command (python -X importtime, cumulative seconds):")
    for name, seconds in imports:
        print(f"  {name:40} {seconds:6.3f}")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
