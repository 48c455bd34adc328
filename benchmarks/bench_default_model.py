"""Held-out evaluation of sr4's bundled default upsampler (and the data split it was trained with).

    python scripts/prepare_data.py --work W --val 12                # photos from Debian packages
    python benchmarks/bench_default_model.py prepare W              # test/val split + training tiles
    python benchmarks/bench_default_model.py export EXP OUT.safetensors  # EMA weights -> sr4/weights
    python benchmarks/bench_default_model.py run W [--limit N]      # the table

`prepare` splits prepare_data's 12 non-training photos by a fixed hash rule into 6 *test* photos
(only ever used here, never for training or model selection) and 6 *validation* photos (the
trainer's validation during training), and cuts the training photos into 480x480 tiles so a
training sample decodes a small PNG instead of a whole 2560x1600 photo.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

N_TEST = 6
TILE = 480


def split_key(name: str) -> str:
    return hashlib.sha256(f"sr4-default-test:{name}".encode()).hexdigest()


def prepare(work: Path) -> int:
    manifest = json.loads((work / "manifest.json").read_text(encoding="utf-8"))
    held = sorted((r["name"] for r in manifest["images"] if r["split"] == "val"), key=split_key)
    train = sorted(r["name"] for r in manifest["images"] if r["split"] == "train")
    if len(held) <= N_TEST:
        raise SystemExit(f"{work}: only {len(held)} held-out photos; run prepare_data.py with --val 12")
    out = work / "default_model"
    for split, names in (("test", held[:N_TEST]), ("val", held[N_TEST:])):
        folder = out / split
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in names:
            shutil.copyfile(work / "val" / name, folder / name)
    tiles = out / "train_tiles"
    shutil.rmtree(tiles, ignore_errors=True)
    tiles.mkdir(parents=True)
    count = 0
    for name in train:
        with Image.open(work / "train" / name) as im:
            arr = np.asarray(im.convert("RGB"))
        h, w = arr.shape[:2]
        for y in range(0, h - TILE + 1, TILE):
            for x in range(0, w - TILE + 1, TILE):
                Image.fromarray(arr[y:y + TILE, x:x + TILE]).save(tiles / f"{Path(name).stem}_{y:04d}_{x:04d}.png")
                count += 1
    split = {"test": held[:N_TEST], "val": held[N_TEST:], "train": train, "tile": TILE, "train_tiles": count}
    (out / "split.json").write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    print(f"{out}: {N_TEST} test, {len(held) - N_TEST} val photos, {count} training tiles from {len(train)} photos")
    return 0


def export(exp: Path, out: Path) -> int:
    """Write the EMA weights of EXP's latest checkpoint (official key layout) with provenance metadata."""
    from safetensors.torch import load_file, save_file

    from sr4.models.bundled import sha256_of
    from sr4.models.loading import load_upsampler
    from sr4.training.checkpoint import EMA_WEIGHTS, find_checkpoint

    ckpt = find_checkpoint(exp)
    if ckpt is None or not (ckpt / EMA_WEIGHTS).is_file():
        raise SystemExit(f"{exp}: no checkpoint with EMA weights")
    state = load_file(str(ckpt / EMA_WEIGHTS))
    step = ckpt.name.split("_")[-1].lstrip("0") or "0"
    meta = {"format": "pt", "name": "sr4-default-light-x4", "weights": "ema", "step": step,
            "recipe": "configs/default_light.yaml (sr4 train, upsampler mode, L1)"}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out), metadata=meta)
    model = load_upsampler(out)  # must load as an official checkpoint
    params = sum(p.numel() for p in model.parameters())
    print(f"{out}: step {step} EMA, {params} parameters, {out.stat().st_size} bytes, sha256 {sha256_of(out)}")
    return 0


def degrade(hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(HR modcropped to 4, LR): MATLAB bicubic x1/4, rounded to 8 bits like the challenge's PNGs."""
    from sr4.image.resize import imresize

    h, w = hr.shape[:2]
    hr = hr[: h - h % 4, : w - w % 4]
    return hr, imresize(hr, 0.25)


def upscale_bicubic(lr: np.ndarray) -> np.ndarray:
    from sr4.image.resize import imresize

    return imresize(lr, 4.0)


def upscale_lanczos(lr: np.ndarray) -> np.ndarray:
    h, w = lr.shape[:2]
    return np.asarray(Image.fromarray(lr).resize((w * 4, h * 4), Image.Resampling.LANCZOS))


def run(work: Path, limit: int, threads: int, figure: Path | None, no_niqe: bool) -> int:
    import time

    import torch

    from sr4.metrics.niqe import niqe
    from sr4.metrics.psnr_ssim import psnr, ssim
    from sr4.models.bundled import DEFAULT_MODEL
    from sr4.pipeline.upscaler import Upscaler

    torch.set_num_threads(threads)
    folder = work / "default_model" / "test"
    files = sorted(folder.glob("*.png"))[: limit or None]
    if not files:
        raise SystemExit(f"{folder}: no test photos; run `bench_default_model.py prepare {work}` first")
    up = Upscaler(tile=256, device="cpu")  # the bundled default model
    methods = {"bicubic": upscale_bicubic, "lanczos": upscale_lanczos, "sr4-default": lambda x: up(x)}
    rows: dict[str, dict[str, list[float]]] = {m: {"psnr": [], "ssim": [], "niqe": [], "cpu": [], "wall": []}
                                                for m in methods}
    best = None
    for path in files:
        with Image.open(path) as im:
            hr, lr = degrade(np.asarray(im.convert("RGB")))
        outs = {}
        for name, fn in methods.items():
            c0, t0 = time.process_time(), time.perf_counter()
            sr = fn(lr)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            outs[name] = sr
            mp = sr.shape[0] * sr.shape[1] / 1e6
            r = rows[name]
            r["psnr"].append(psnr(sr, hr))
            r["ssim"].append(ssim(sr, hr))
            r["niqe"].append(float("nan") if no_niqe else niqe(sr))
            r["cpu"].append(cpu / mp)
            r["wall"].append(wall / mp)
        gain = rows["sr4-default"]["psnr"][-1] - rows["bicubic"]["psnr"][-1]
        print(f"{path.name}: {hr.shape[1]}x{hr.shape[0]}  " + "  ".join(
            f"{m} {rows[m]['psnr'][-1]:.2f} dB" for m in methods) + f"  (+{gain:.2f})", flush=True)
        if figure is not None and best is None:  # the first test photo (sorted by name): a fixed rule
            best = (path.name, _texture_crop(hr, outs))
    print()
    print(f"{len(files)} held-out photos from {folder} (x4, LR = MATLAB bicubic, 8-bit); PSNR/SSIM on Y, "
          f"modcrop 4, shave 4; NIQE (pyiqa semantics) lower is better; {torch.get_num_threads()} torch threads")
    print(f"{'method':<12} {'PSNR dB':>8} {'SSIM':>7} {'NIQE':>6} {'CPU s/MP':>9} {'wall s/MP':>9}")
    for name, r in rows.items():
        print(f"{name:<12} {np.mean(r['psnr']):8.3f} {np.mean(r['ssim']):7.4f} {np.mean(r['niqe']):6.3f} "
              f"{np.mean(r['cpu']):9.3f} {np.mean(r['wall']):9.3f}")
    gain = np.array(rows["sr4-default"]["psnr"]) - np.array(rows["bicubic"]["psnr"])
    print(f"sr4-default - bicubic: {gain.mean():+.3f} dB mean (min {gain.min():+.3f}, max {gain.max():+.3f}); "
          f"model {DEFAULT_MODEL.filename} sha256 {DEFAULT_MODEL.sha256[:16]}...")
    if figure is not None and best is not None:
        _write_figure(figure, best)
        print(f"figure: {figure} (bicubic | sr4-default | ground truth, 96x96 crop of {best[0]}, shown 2x)")
    return 0


def _texture_crop(hr: np.ndarray, outs: dict[str, np.ndarray], size: int = 96) -> list[np.ndarray]:
    """Crops of bicubic / sr4 / HR at the window (size px, half-size grid) at the 98th percentile
    of bicubic's error: chosen by texture alone, never by how well sr4 does there."""
    import torch
    import torch.nn.functional as F

    err = torch.from_numpy(((outs["bicubic"].astype(np.float64) - hr) ** 2).mean(axis=2))[None, None]
    pooled = F.avg_pool2d(err, size, stride=size // 2)[0, 0]
    order = torch.argsort(pooled.flatten())
    idx = int(order[int(0.98 * (len(order) - 1))])
    y, x = divmod(idx, pooled.shape[1])
    y, x = y * size // 2, x * size // 2
    return [a[y:y + size, x:x + size] for a in (outs["bicubic"], outs["sr4-default"], hr)]


def _write_figure(path: Path, best) -> None:
    """bicubic | sr4 default | ground truth, each crop shown 2x (nearest) with a 4 px white gutter."""
    crops = [np.kron(c, np.ones((2, 2, 1), dtype=np.uint8)) for c in best[1]]
    gap = np.full((crops[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([crops[0], gap, crops[1], gap, crops[2]], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="split held-out photos into test/val and cut training tiles")
    p.add_argument("work", type=Path)
    e = sub.add_parser("export", help="write the EMA weights of an experiment's latest checkpoint")
    e.add_argument("exp", type=Path)
    e.add_argument("out", type=Path)
    r = sub.add_parser("run", help="score sr4-default, bicubic and Lanczos on the held-out test photos")
    r.add_argument("work", type=Path)
    r.add_argument("--limit", type=int, default=0, help="first N test photos only (0 = all)")
    r.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the shared CPU)")
    r.add_argument("--figure", type=Path, help="write a bicubic / sr4 / ground-truth crop PNG here")
    r.add_argument("--no-niqe", action="store_true", help="skip NIQE (slow on large photos)")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        return prepare(args.work)
    if args.cmd == "export":
        return export(args.exp, args.out)
    return run(args.work, args.limit, args.threads, args.figure, args.no_niqe)


if __name__ == "__main__":
    sys.exit(main())
