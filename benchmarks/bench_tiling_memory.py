"""Peak memory of tiled upscaling is flat in the image size (apart from the image arrays themselves).

For LR inputs of 0.25 to 4 megapixels, each in a fresh process, it measures the peak resident
memory (VmHWM) of `sr4.pipeline.tiling.tiled_upscale` with a fixed tile running a small x4 conv
net (64 channels), minus the baseline (after warm-up, input already allocated) and minus the
float32 output the call must return. What is left (tile activations, blending weights, allocator
slack) should not grow with the image: the script prints the largest/smallest ratio of that
remainder and checks it is within 1.2. (Without tiling the remainder grows with the image:
activations are 64 channels of the whole image; try `--tile 0`.)

The children run with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_=131072): by default
glibc raises that threshold after large frees, so freed tile buffers stay in the heap and the
peak wobbles by tens of MiB from run to run for reasons unrelated to tiling (`--glibc-default`
shows it; measured here 36-64 MiB remainder instead of a flat 52 MiB).

    python benchmarks/bench_tiling_memory.py [--sizes 0.25 0.5 1 2 4] [--tile 256]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def child(megapixels: float, tile: int) -> dict:
    import torch
    from torch import nn

    from sr4.pipeline.tiling import tiled_upscale

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(64, 48, 3, padding=1), nn.PixelShuffle(4)).eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return tiled_upscale(net, x, scale=4, tile=tile or None, overlap=16)

    run(torch.rand(1, 3, max(tile, 64) * 2, max(tile, 64) * 2))  # warm-up: one-time allocations go into the baseline
    side = int(round(math.sqrt(megapixels * 1e6)))
    h, w = side, int(round(megapixels * 1e6 / side))
    x = torch.rand(1, 3, h, w)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS (which includes the input)
    base = _rss_kib("VmRSS") * 1024
    out = run(x)
    peak = _rss_kib("VmHWM") * 1024
    arrays = out.numel() * out.element_size()  # the input is already in the baseline
    return {"megapixels": h * w / 1e6, "size": f"{w}x{h}", "peak": peak - base, "arrays": arrays,
            "extra": peak - base - arrays}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.tile)))
        return 0
    env = dict(os.environ)
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    rows = []
    for mp in args.sizes:
        res = subprocess.run([sys.executable, __file__, "--child", str(mp), "--tile", str(args.tile)],
                             capture_output=True, text=True, check=True, env=env)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    mib = 1 << 20
    print(f"{'input':>10} {'size':>11} {'peak-base MiB':>14} {'arrays MiB':>11} {'remainder MiB':>14}")
    for r in rows:
        print(f"{r['megapixels']:>8.2f}MP {r['size']:>11} {r['peak'] / mib:>14.1f} {r['arrays'] / mib:>11.1f} "
              f"{r['extra'] / mib:>14.1f}")
    extras = [r["extra"] for r in rows]
    ratio = max(extras) / max(min(extras), 1)
    print(f"remainder largest/smallest ratio over {args.sizes[0]}-{args.sizes[-1]} MP (tile {args.tile}): "
          f"{ratio:.3f} -> {'flat within 20%' if ratio <= 1.2 else 'NOT flat within 20%'}")
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
