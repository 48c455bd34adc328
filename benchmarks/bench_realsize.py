"""SNUCV at its real size on the CPU: seconds per output megapixel and peak memory of U, VAE and M, and the official
SNUCV code on the same weights and inputs.

    python benchmarks/bench_realsize.py --work /tmp/sr4_realsize                      # 512x512 and 1024x1024 outputs
    python benchmarks/bench_realsize.py --work /tmp/sr4_realsize --official PATH --deps DIR --official-sizes 512

U is MambaIRv2-B x4 and M the SD3-medium transformer and VAE with TSD-SR's LoRA (rank 64), built from their
published configurations with random weights and written once into `--work`/model in the official formats (the
transformer stored in float16: 4 GB; every value is a float16 number, so float32 runs see the same weights).
sr4 runs `sr4.Pipeline.from_model_dir(..., pipeline="snucv")` in float32 on the CPU with its defaults; the stage
times and peak memory come from that one ordinary call (benchmarks/realsize.py, `StageMeter`). Peak memory is
each stage's rise in resident memory above its start (the weights are already loaded): the working memory.

With `--official PATH` (a checkout of dhryougit/NTIRE2025_SR_SNUCV; `--deps` a folder with torchvision, einops and
opencv-python-headless, e.g. `pip install --no-deps --target DIR torchvision einops opencv-python-headless`), its
`models/team04_SNUCV` inference runs on the same folder and the same LR PNG, seeded like sr4 (one
`torch.manual_seed` before its image loop), on the CPU in float32, with sr4's selective scan standing in for
mamba_ssm's CUDA kernel; nothing of it is copied into sr4. Printed: max / mean difference of the two 8-bit outputs
and the ratio of the official image loop's time to sr4's call.

Each part runs in its own process, one after the other (the machine needs ~9 GB for one of them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child_env() -> dict[str, str]:
    """This environment plus sr4's thread policy (as `sr4` applies it), the same for sr4 and the official code."""
    sys.path.insert(0, str(ROOT / "src"))
    from sr4.utils.threads import decide_thread_policy

    env = dict(os.environ)
    env.update(decide_thread_policy(None, env, torch_loaded=False).environment)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def _run_child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=_child_env())
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _machine() -> str:
    mem = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            mem[key] = int(value.split()[0]) // 1024
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f}, memory {mem['MemAvailable'] / 1024:.1f} of {mem['MemTotal'] / 1024:.1f} GiB "
            f"available")


# ----------------------------------------------------------------------------- children


def _make_folder(work: Path, layers: int, u_depths: list[int] | None, vae_channels: list[int] | None) -> dict:
    import realsize

    start = time.perf_counter()
    transformer = dict(realsize.SD3_MEDIUM_TRANSFORMER, num_layers=layers)
    vae = dict(realsize.SD3_MEDIUM_VAE, block_out_channels=vae_channels) if vae_channels else None
    folder = realsize.write_model_folder(work / "model", transformer=transformer, vae=vae,
                                         mamba=realsize.mambairv2_config(depths=u_depths))
    return {"folder": str(folder), "seconds": time.perf_counter() - start}


def _sr4_child(work: Path, sizes: list[int]) -> dict:
    import numpy as np
    import realsize
    import torch
    from PIL import Image

    from sr4.pipeline.snucv import Pipeline

    start = time.perf_counter()
    pipe = Pipeline.from_model_dir(work / "model", pipeline="snucv", device="cpu", seed=realsize.SEED)
    load_s = time.perf_counter() - start
    meter = realsize.StageMeter(pipe)
    results = {"load_seconds": load_s, "rss_after_load_mb": realsize._rss_bytes() / 2**20,
               "threads": torch.get_num_threads(), "sizes": {}}
    for size in sizes:
        lr_path = work / f"in_{size}" / "lr.png"
        with Image.open(lr_path) as im:
            lr = im.convert("RGB")
        u_tile = pipe.upsampler.tile_size(lr.height, lr.width)
        seconds, out = realsize.timed(lambda lr=lr: pipe(lr), "cpu")
        out_path = work / f"sr4_{size}" / "lr.png"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out.save(out_path)
        results["sizes"][str(size)] = {"seconds": seconds, "stages": meter.take(), "u_tile": u_tile,
                                       "output": str(out_path), "mean_level": float(np.asarray(out).mean())}
    import resource

    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def _official_child(work: Path, size: int, repo: Path, deps: Path | None, u_depths: list[int] | None) -> dict:
    import realsize

    out = work / f"official_{size}"
    out.mkdir(parents=True, exist_ok=True)
    mamba = realsize.mambairv2_config(depths=u_depths) if u_depths else None  # None: SNUCV's own MambaIRv2-B
    return realsize.run_official_snucv(repo, work / "model", work / f"in_{size}", out, seed=realsize.SEED,
                                       device="cpu", deps=deps, fp32=True, mamba=mamba)


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the model (4.5 GB, reused), inputs, outputs")
    p.add_argument("--sizes", default="512,1024", help="output sides in pixels (default 512,1024)")
    p.add_argument("--official", type=Path, help="checkout of dhryougit/NTIRE2025_SR_SNUCV")
    p.add_argument("--deps", type=Path, help="folder with torchvision, einops, cv2 for the official code")
    p.add_argument("--official-sizes", default="512", help="sizes the official code runs at (default 512)")
    p.add_argument("--transformer-layers", type=int, default=24, help="SD3 blocks (default 24; fewer for a trial)")
    p.add_argument("--u-depths", help="MambaIRv2-B stage depths, e.g. 1 for a trial (default 6,6,6,6,6,6)")
    p.add_argument("--vae-channels", help="VAE block widths (default 128,256,512,512)")
    p.add_argument("--folder-only", action="store_true", help="write the model folder and stop (for bench_pipeline.py)")
    p.add_argument("--child", choices=["folder", "sr4", "official"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    u_depths = [int(d) for d in args.u_depths.split(",")] if args.u_depths else None
    vae_channels = [int(c) for c in args.vae_channels.split(",")] if args.vae_channels else None
    if args.child == "folder":
        print(json.dumps(_make_folder(args.work, args.transformer_layers, u_depths, vae_channels)))
        return 0
    if args.child == "sr4":
        print(json.dumps(_sr4_child(args.work, sizes)))
        return 0
    if args.child == "official":
        print(json.dumps(_official_child(args.work, args.size, args.official, args.deps, u_depths)))
        return 0

    import numpy as np
    import realsize
    from PIL import Image

    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, python {' '.join(sys.argv)}")
    print(f"machine: {_machine()}")
    made = _run_child(["--child", "folder", "--work", str(args.work), "--transformer-layers",
                       str(args.transformer_layers)] + (["--u-depths", args.u_depths] if args.u_depths else [])
                      + (["--vae-channels", args.vae_channels] if args.vae_channels else []))
    print(f"model folder {made['folder']} ready ({made['seconds']:.0f} s): MambaIRv2-B x4 (depths "
          f"{args.u_depths or '6,6,6,6,6,6'}), SD3-medium transformer ({args.transformer_layers} of 24 blocks) "
          f"and VAE (widths {args.vae_channels or '128,256,512,512'}), TSD-SR LoRA rank 64, {realsize.PROMPT_TOKENS} "
          "prompt tokens; random weights")
    if args.folder_only:
        return 0
    for size in sizes:
        lr = realsize.smooth_image(size // 4, size // 4, seed=size)
        (args.work / f"in_{size}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(lr).save(args.work / f"in_{size}" / "lr.png")
    sr4 = _run_child(["--child", "sr4", "--work", str(args.work), "--sizes", args.sizes])
    print(f"sr4: loaded in {sr4['load_seconds']:.0f} s ({sr4['rss_after_load_mb'] / 1024:.1f} GiB resident), "
          f"{sr4['threads']} torch threads; process peak {sr4['peak_rss_mb'] / 1024:.1f} GiB; machine: {_machine()}")
    print(f"\n{'output':>9} {'stage':10} {'seconds':>8} {'s/MP':>8} {'work MB':>8}")
    for size, row in sr4["sizes"].items():
        mp = int(size) ** 2 / 1e6
        for stage, (seconds, peak) in row["stages"].items():
            print(f"{size + 'x' + size:>9} {stage:10} {seconds:8.1f} {seconds / mp:8.1f} {peak:8.0f}")
        print(f"{size + 'x' + size:>9} {'total':10} {row['seconds']:8.1f} {row['seconds'] / mp:8.1f}   (U tile: "
              f"{row['u_tile'] or 'one pass'})")
    if args.official:
        print("\nofficial SNUCV code, same folder and LR PNG, CPU float32, sr4's scan for mamba_ssm:")
        for size in (int(s) for s in args.official_sizes.split(",")):
            off = _run_child(["--child", "official", "--work", str(args.work), "--size", str(size),
                              "--official", str(args.official)] + (["--deps", str(args.deps)] if args.deps else [])
                             + (["--u-depths", args.u_depths] if args.u_depths else []))
            with Image.open(args.work / f"official_{size}" / "lr.png") as a, \
                    Image.open(sr4["sizes"][str(size)]["output"]) as b:
                worst, mean = realsize.compare_8bit(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
            mine = sr4["sizes"][str(size)]["seconds"]
            print(f"  {size}x{size}: official {off['seconds']:.1f} s (process peak {off['peak_rss_mb'] / 1024:.1f} "
                  f"GiB), sr4 {mine:.1f} s: official / sr4 = {off['seconds'] / mine:.2f}x; output difference max "
                  f"{worst}, mean {mean:.4f} grey levels")
    print(f"\nmachine at the end: {_machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
