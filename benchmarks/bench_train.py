#!/usr/bin/env python3
"""Training throughput and peak memory: upsampler-only vs through-refiner (tiny random models).

    python benchmarks/bench_train.py [--steps 5] [--gt 32] [--batch 2] [--device cpu] [--threads 1]

Each mode runs in a fresh process (so peak-memory readings do not mix): tiny MambaIRv2 x4 as U,
a tiny random SD3 transformer + VAE wrapped in sr4's TSDSRRefiner as M, a tiny random CLIP and
random LPIPS-Alex. Reports steps/s, the activation memory autograd holds for the backward pass
(exact, from saved-tensor hooks) and the peak memory of training (CUDA: max allocated; CPU: growth
of the process's peak RSS from before the first step, coarse), then the ratios between modes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

TINY_MAMBA = dict(upscale=4, embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=8, inner_rank=4,
                  num_tokens=8, mlp_ratio=1.0, upsampler="pixelshuffle", img_range=1.0, in_chans=3)
TINY_TRANSFORMER = dict(sample_size=8, patch_size=1, in_channels=16, out_channels=16, num_layers=1,
                        attention_head_dim=4, num_attention_heads=1, joint_attention_dim=8,
                        caption_projection_dim=4, pooled_projection_dim=8, pos_embed_max_size=16)
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 16, 32, 32], layers_per_block=2,
                latent_channels=16, norm_num_groups=4, scaling_factor=1.5305, shift_factor=0.0609,
                use_quant_conv=False, use_post_quant_conv=False)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _assets(root: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    from sr4.metrics.lpips import LPIPS
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test stand-ins
    from toy_models import make_tiny_clip

    img = data.astronaut()
    (root / "hr").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        crop = np.ascontiguousarray(img[64 * i:64 * i + 160, 40 * i:40 * i + 160])
        Image.fromarray(crop).save(root / "hr" / f"{i}.png")
    (root / "lpips" / "pyiqa").mkdir(parents=True, exist_ok=True)
    torch.save(LPIPS().state_dict(), root / "lpips" / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth")
    make_tiny_clip(root / "clip")
    return {"hr": str(root / "hr"), "lpips": str(root / "lpips"), "clip": str(root / "clip")}


def _activation_bytes(trainer, batch: dict) -> int:
    """Bytes of distinct tensors autograd keeps for the backward pass after one training forward
    (what gradient checkpointing trades for recomputation); exact and allocator-independent."""
    import torch

    from sr4.ops import quantize_8bit_ste

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    lq, gt = batch["lq"].to(trainer.device), batch["gt"].to(trainer.device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sr = trainer._upsample(lq, 1)
        refined = trainer._refine(quantize_8bit_ste(sr), 2) if trainer.refiner is not None else None
        trainer.loss(sr, gt, refined)
    return sum(seen.values())


def _run(mode: str, args: argparse.Namespace, assets: dict, queue) -> None:
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    from sr4.networks.mambairv2 import MambaIRv2
    from sr4.refiner.tsdsr import TSDSRRefiner
    from sr4.training.config import config_from_dict
    from sr4.training.data import TrainDataset
    from sr4.training.trainer import Trainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    through = mode != "upsampler"
    refiner = None
    if through:
        refiner = TSDSRRefiner(SD3Transformer2DModel(**TINY_TRANSFORMER), AutoencoderKL(**TINY_VAE),
                               torch.randn(1, 5, 8), torch.randn(1, 8))
    with tempfile.TemporaryDirectory() as exp:
        cfg = config_from_dict({
            "mode": "through-refiner" if through else "upsampler", "exp_dir": exp, "total_steps": 10**6,
            "progress": False, "device": args.device, "log_every": 0, "val_every": 0, "save_every": 0,
            "model": {"arch": "mambairv2", "kwargs": TINY_MAMBA, "gradient_checkpointing": mode.endswith("ckpt")},
            "refiner": {"path": "unused: module given", "dtype": "fp16",
                        "gradient_checkpointing": mode.endswith("ckpt")},
            "data": {"train": [{"path": assets["hr"]}], "gt_size": args.gt, "batch_size": args.batch,
                     "num_workers": 0},
            "loss": {"l1": 1.0, "lpips": 0.1, "clip": 0.5 if through else 0.0, "clip_path": assets["clip"],
                     "lpips_weights": assets["lpips"]},
            "optim": {"lr": 1e-5},
        })
        trainer = Trainer(cfg, upsampler=MambaIRv2(**TINY_MAMBA), refiner=refiner, device=device)
        ds = TrainDataset(cfg.data.train, cfg.data.gt_size, 4, 0)
        batches = iter(trainer._loader(ds))
        warm = [next(batches) for _ in range(2)]
        timed = [next(batches) for _ in range(args.steps)]
        held = _activation_bytes(trainer, warm[0]) / 2**20
        base = _peak_rss_mb()
        for b in warm:
            trainer.train_step(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for b in timed:  # median of per-step times: robust to other load on a shared machine
            t0 = time.perf_counter()
            trainer.train_step(b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        dt = statistics.median(times) * args.steps
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb() - base
        queue.put((mode, args.steps / dt, peak, held))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--gt", type=int, default=32, help="GT patch size (LR is gt/4)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: tiny models gain nothing from more, and spinning threads "
                         "on a shared machine slow every step down many times)")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        assets = _assets(Path(tmp))
        for mode in ("upsampler", "through-refiner", "through-refiner+ckpt"):
            q = ctx.Queue()
            p = ctx.Process(target=_run, args=(mode, args, assets, q))
            p.start()
            p.join()
            if p.exitcode != 0:
                print(f"{mode}: failed (exit code {p.exitcode})", file=sys.stderr)
                return 1
            _, rate, peak, held = q.get()
            results[mode] = (rate, held)
            unit = "MiB max allocated" if args.device.startswith("cuda") else "MiB peak-RSS growth"
            print(f"{mode:22s} {rate:7.3f} steps/s  {held:8.2f} MiB held for backward  {peak:8.1f} {unit}")
    up, tr, ck = results["upsampler"], results["through-refiner"], results["through-refiner+ckpt"]
    print(f"through-refiner / upsampler step time: {up[0] / tr[0]:.2f}x")
    print(f"through-refiner / upsampler memory held for backward: {tr[1] / max(up[1], 1e-9):.2f}x")
    print(f"gradient checkpointing: step time {tr[0] / ck[0]:.2f}x, memory held for backward "
          f"{ck[1] / max(tr[1], 1e-9):.3f}x")
    print(f"(batch {args.batch}, GT {args.gt} px, median of {args.steps} timed steps after 2 warm-up steps, "
          f"device {args.device}, {args.threads} thread(s);\n tiny random models: the ratios, not the absolute speeds, "
          "are what carries over)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
