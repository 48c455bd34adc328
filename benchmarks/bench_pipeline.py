"""Time and peak memory per output megapixel of the SNUCV stages, and how they scale with size.

Stages: U (MambaIRv2 x4 through sr4.Upscaler's LR tiles), M (the SD3 transformer on 64-latent
tiles, here the tile size of the model in use), VAE (tiled encode + decode, GroupNorm statistics
from a downscaled pass) and vae-exact (statistics merged over all tiles, tile states parked in
host memory: on CUDA device memory stays flat, on CPU the parked states grow with the image).
Goal: time linear in the output size (seconds per MP flat) and working memory flat beyond the
tiles (only the full-size input/output buffers grow).

Without --model-dir the tiny random models of the tests are used (CPU-sized); with a real SNUCV
folder and a GPU the real sizes run. On CPU each measurement runs in a fresh process and reports
the growth of its peak resident memory; on CUDA torch's peak allocation counter is used. "work"
memory is the peak minus the stage's own input and output buffers (which must grow with size).

    python benchmarks/bench_pipeline.py                     # tiny models, 1/4/16 MP outputs
    python benchmarks/bench_pipeline.py --sizes 0.25,1,4    # quicker
    python benchmarks/bench_pipeline.py --model-dir DIR --device cuda --stages m,vae
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("u", "m", "vae", "vae-exact")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _tiny_dir() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from refiner_fixtures import write_tiny_model_folder

    d = Path(tempfile.gettempdir()) / "sr4_bench_tiny_model"
    if not (d / "mamba_trained.pth").exists():
        write_tiny_model_folder(d)
    return d


def measure(stage: str, out_mp: float, model_dir: Path, device: torch.device, tiny: bool,
            vae_tiles: tuple[int | None, int | None] = (None, None)) -> dict:
    """Run one stage once at an output of about `out_mp` megapixels; returns time and memory."""
    from sr4.refiner.tsdsr import RefinerConfig, TSDSRRefiner

    torch.manual_seed(0)
    side = max(64, int(round(math.sqrt(out_mp * 1e6) / 64)) * 64)  # output side, multiple of 64
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    # Tiny transformer: positional grid of 16 latents -> 16-latent tiles; real: TSD-SR's 64 / 1024 / 224.
    # VAE tile sizes exclude the halo (TSD-SR's meaning): tiny tiles of 256 px / 64 latents with their halos.
    cfg = RefinerConfig(latent_tile=16 if tiny else 64, latent_overlap=4 if tiny else 8,
                        vae_encoder_tile=192 if tiny else 1024, vae_encoder_halo=32,
                        vae_decoder_tile=48 if tiny else 224, vae_decoder_halo=8 if tiny else 11,
                        vae_tile_stats="exact" if stage == "vae-exact" else "fast")
    if vae_tiles[0]:
        cfg.vae_encoder_tile = vae_tiles[0]
    if vae_tiles[1]:
        cfg.vae_decoder_tile = vae_tiles[1]
    io_bytes = 0
    with torch.no_grad():
        if stage == "u":
            from sr4.pipeline.upscaler import Upscaler

            up = Upscaler(model_dir / "mamba_trained.pth", tile=64, tile_overlap=8, device=device, dtype="fp32")
            x = torch.rand(1, 3, side // 4, side // 4)
            io_bytes = x.numel() * 4 * 17  # LR input + x4 float32 output
            run = lambda: up.upscale_rgb(x.to(device), up.make_generator(0))  # noqa: E731
            up.upscale_rgb(torch.rand(1, 3, 16, 16, device=device), up.make_generator(0))  # JIT / first-call warm-up
        else:
            refiner = TSDSRRefiner.from_model_dir(model_dir, device=device, dtype=dtype, config=cfg)
            if stage == "m":
                z = torch.randn(1, 16, side // 8, side // 8, device=device, dtype=dtype)
                io_bytes = 2 * z.numel() * z.element_size()
                run = lambda: refiner.predict_v(z)  # noqa: E731
                refiner.predict_v(z[..., :8, :8])  # first-call warm-up
            else:
                x = torch.rand(1, 3, side, side, device=device, dtype=dtype) * 2 - 1
                io_bytes = 2 * x.numel() * x.element_size()

                def run() -> torch.Tensor:
                    z = refiner.encode(x, torch.Generator().manual_seed(0), tiled=True)
                    return refiner.decode(z, tiled=True)

                refiner.decode(refiner.encode(x[..., :64, :64], tiled=True), tiled=True)  # first-call warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            base = _rss_mb()
        start = time.perf_counter()
        out = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if device.type == "cuda":
            peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            peak_mb = _rss_mb() - base
        del out
    mp = side * side / 1e6
    return {"stage": stage, "side": side, "mp": mp, "seconds": seconds, "s_per_mp": seconds / mp,
            "peak_mb": peak_mb, "work_mb": peak_mb - io_bytes / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,4,16", help="output megapixels, comma separated (default 1,4,16)")
    p.add_argument("--stages", default="u,m,vae", help="stages to measure: u, m, vae, vae-exact (default u,m,vae)")
    p.add_argument("--model-dir", type=Path, help="real SNUCV model folder (default: tiny random models)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--vae-encoder-tile", type=int, help="VAE encoder tile in pixels, halo excluded (default: TSD-SR's "
                   "1024 for a model folder, 192 for the tiny models)")
    p.add_argument("--vae-decoder-tile", type=int, help="VAE decoder tile in latents, halo excluded (default 224 / 48)")
    p.add_argument("--worker", nargs=2, metavar=("STAGE", "MP"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    tiny = args.model_dir is None
    model_dir = _tiny_dir() if tiny else args.model_dir
    vae_tiles = (args.vae_encoder_tile, args.vae_decoder_tile)
    if args.worker:
        print(json.dumps(measure(args.worker[0], float(args.worker[1]), model_dir, device, tiny, vae_tiles)))
        return 0
    sizes = [float(s) for s in args.sizes.split(",")]
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        p.error(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    torch_threads = torch.get_num_threads()
    print(f"device {device}, {'tiny random models' if tiny else model_dir}, torch threads {torch_threads}")
    print(f"{'stage':9} {'out MP':>7} {'seconds':>9} {'s/MP':>8} {'peak MB':>9} {'work MB':>9}")
    results: dict[str, list[dict]] = {}
    for stage in stages:
        for mp in sizes:
            if device.type == "cpu":  # a fresh process per point: ru_maxrss is a per-process high-water mark
                cmd = [sys.executable, __file__, "--worker", stage, str(mp), "--device", args.device]
                if args.model_dir:
                    cmd += ["--model-dir", str(args.model_dir)]
                for flag, value in zip(("--vae-encoder-tile", "--vae-decoder-tile"), vae_tiles):
                    cmd += [flag, str(value)] if value else []
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                row = measure(stage, mp, model_dir, device, tiny, vae_tiles)
            results.setdefault(stage, []).append(row)
            print(f"{stage:9} {row['mp']:7.2f} {row['seconds']:9.2f} {row['s_per_mp']:8.2f} {row['peak_mb']:9.1f} "
                  f"{row['work_mb']:9.1f}", flush=True)
    print("\nratios, largest vs smallest size (1.0 = linear time / flat working memory):")
    for stage, rows in results.items():
        lo, hi = rows[0], rows[-1]
        size_ratio = hi["mp"] / lo["mp"]
        work_ratio = hi["work_mb"] / lo["work_mb"] if lo["work_mb"] > 0.05 else float("nan")
        print(f"  {stage:9} size x{size_ratio:.1f}: seconds/MP x{hi['s_per_mp'] / lo['s_per_mp']:.2f}, "
              f"peak MB x{hi['peak_mb'] / max(lo['peak_mb'], 1e-9):.2f}, working MB x{work_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
