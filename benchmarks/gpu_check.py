"""One-shot GPU check: every CUDA path of sr4 against its CPU / float32 reference, then throughput and peak memory.

    python benchmarks/gpu_check.py                                    # CUDA, real sizes (about 5 minutes, one GPU)
    python benchmarks/gpu_check.py --official PATH --deps DIR         # + the official SNUCV code's time ratio
    python benchmarks/gpu_check.py --model-dir model_zoo/team04_SNUCV # a real SNUCV folder instead of random weights
    python benchmarks/gpu_check.py --device cpu --quick               # CI size (tiny models): tests/test_gpu_check.py

Prints one markdown table (paste it into benchmarks/README.md with the date and the GPU):
- checks (pass/fail): the selective scan backends of the device (chunked, mamba_ssm's kernel when it imports)
  against the reference loop on the CPU; MambaIRv2 in float32 on the device against the CPU, and in
  float16 / bfloat16 against float32 as PSNR; the non-finite guard (when this build has it); the TSD-SR refiner
  in the device's default dtype against the CPU in float32; exact-statistics VAE tiles on the device against
  the same tiles on the CPU; working memory of latent tiles and of VAE tiles at two image sizes (bounded by the
  tile: the larger image may not need more than 1.5x);
- throughput (information): MambaIRv2 S / B / L x4 (random weights, 256x256 -> 1024x1024), and the SNUCV
  pipeline at 1 and 4 output megapixels, per stage (U, VAE encode, M on latent tiles, VAE decode): seconds per
  output MP and peak device memory; with --official, the official SNUCV code (dhryougit/NTIRE2025_SR_SNUCV, run
  from the given checkout, in float16 as it ships) on the same folder and 1 MP input: output difference and the
  ratio of its time to sr4's.
Without --model-dir the SNUCV folder has random weights at real size (MambaIRv2-B, SD3-medium transformer and
VAE from their published configurations, TSD-SR's LoRA rank 64), written once under --work (4.5 GB).
--quick shrinks every model and size (golden-test models, 64-256 px) so the whole script runs on a CPU in about a
minute; the numbers then only show that every path runs. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realsize  # noqa: E402  (benchmarks/realsize.py; puts tests/ and tools/ on the path)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    part: str
    check: str
    against: str
    measured: str
    limit: str = ""
    result: str = "info"  # ok | FAIL | skipped | info


@dataclass
class Sizes:
    """What a run measures: real sizes on a GPU, tiny ones with --quick."""

    scan: tuple[int, int, int]  # hidden, d_state, length
    u_configs: dict[str, dict]  # name -> MambaIRv2 kwargs for the throughput rows
    u_check: dict  # MambaIRv2 kwargs for the dtype checks
    u_lr: int  # LR side of the U throughput rows
    u_check_lr: int
    refiner_px: int  # side of the refiner check image
    bound_latent: tuple[int, int]  # latent sides for the latent-tile memory bound
    bound_pixels: tuple[int, int]  # image sides for the VAE-tile memory bound
    snucv_lr: tuple[int, int]  # LR sides of the SNUCV throughput rows


def real_sizes() -> Sizes:
    names = {"S": "classicSR_Small_x4", "B": "classicSR_Base_x4", "L": "classicSR_Large_x4"}
    return Sizes(scan=(348, 16, 4096), u_configs={k: realsize.mambairv2_config(v) for k, v in names.items()},
                 u_check=realsize.mambairv2_config("classicSR_Small_x4"), u_lr=256, u_check_lr=64, refiner_px=512,
                 bound_latent=(128, 256), bound_pixels=(1024, 2048), snucv_lr=(256, 512))


def quick_sizes() -> Sizes:
    from refiner_golden import GOLDEN_MAMBA

    names = {"S": "classicSR_Small_x4", "B": "classicSR_Base_x4", "L": "classicSR_Large_x4"}
    return Sizes(scan=(24, 4, 256), u_configs={k: realsize.mambairv2_config(v, depths=[1]) for k, v in names.items()},
                 u_check=GOLDEN_MAMBA, u_lr=32, u_check_lr=24, refiner_px=64, bound_latent=(32, 64),
                 bound_pixels=(128, 256), snucv_lr=(32, 64))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float().cpu() - b.float().cpu()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def memory(mb: float, device: torch.device) -> str:
    return f"peak {mb:.0f} MB" if device.type == "cuda" else f"resident +{mb:.0f} MB"


def verdict(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def random_upsampler(kwargs: dict, seed: int = 0) -> torch.nn.Module:
    """MambaIRv2 with the golden fixtures' seeded random weights (realistic scales, float16 numbers)."""
    from refiner_golden import fill_parameters

    from sr4.networks.mambairv2 import MambaIRv2

    return fill_parameters(MambaIRv2(**kwargs), seed, last_conv_scale={"conv_last.weight": 0.3})


def lr_tensor(side: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(realsize.smooth_image(side, side, seed)).permute(2, 0, 1)[None].float() / 255


# ----------------------------------------------------------------------------- checks


def check_scan(device: torch.device, sizes: Sizes) -> list[Row]:
    from bench_scan import make_inputs

    from sr4.networks.scan import available_backends, selective_scan, selective_scan_reference

    hidden, d_state, length = sizes.scan
    x = make_inputs(1, hidden, d_state, length, groups=1, seed=0)
    ref = selective_scan_reference(**x, delta_softplus=True)
    rows = []
    for backend in ("chunked", "numba", "cuda"):
        name = f"{backend}, {device.type} fp32, D {hidden} N {d_state} L {length}"
        if backend not in available_backends(device):
            if backend == "cuda" and device.type == "cuda":
                rows.append(Row("scan", name, "reference loop, CPU fp32", "mamba_ssm does not import", "", "skipped"))
            continue
        y = selective_scan(**{k: v.to(device) for k, v in x.items()}, delta_softplus=True, backend=backend)
        err = rel_err(y, ref)
        rows.append(Row("scan", name, "reference loop, CPU fp32", f"max err {err:.1e} of max |y|", "<= 1e-4",
                        verdict(err <= 1e-4)))
    return rows


def check_upsampler(device: torch.device, sizes: Sizes) -> list[Row]:
    net = random_upsampler(sizes.u_check)
    x = lr_tensor(sizes.u_check_lr, seed=1)

    def run(dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
        model = copy.deepcopy(net).to(device=dev, dtype=dtype)
        with torch.no_grad():  # a CPU generator drives any device: the same routing noise everywhere
            return model(x.to(device=dev, dtype=dtype), generator=torch.Generator().manual_seed(3)).float().cpu()

    ref = run(torch.float32, torch.device("cpu"))
    out = run(torch.float32, device)
    err = rel_err(out, ref)
    label = f"MambaIRv2 x4 ({sum(p.numel() for p in net.parameters()) / 1e6:.1f}M), {sizes.u_check_lr} px LR"
    rows = [Row("U", f"{label}, {device.type} fp32", "CPU fp32", f"max err {err:.1e}", "<= 1e-3",
                verdict(err <= 1e-3))]
    # Half precision can flip a few of MambaIRv2's routing decisions (an argmax over noisy logits), which moves
    # whole tokens: the limits catch a broken path (NaN, garbage: ~10 dB), not that.
    for dtype, limit in ((torch.float16, 30.0), (torch.bfloat16, 25.0)):
        name = str(dtype).removeprefix("torch.")
        try:
            value = psnr(run(dtype, device).clamp(0, 1), ref.clamp(0, 1))
        except (RuntimeError, NotImplementedError) as exc:  # a dtype this device cannot run
            rows.append(Row("U", f"{label}, {device.type} {name}", "CPU fp32", f"not run: {exc}"[:80], "",
                            "skipped"))
            continue
        rows.append(Row("U", f"{label}, {device.type} {name}", f"{device.type} fp32", f"PSNR {value:.1f} dB",
                        f">= {limit:.0f} dB", verdict(value >= limit)))
    return rows


def check_non_finite_guard(device: torch.device, sizes: Sizes) -> list[Row]:
    from sr4.pipeline import base
    from sr4.pipeline.upscaler import Upscaler

    error_type = getattr(base, "NonFiniteOutputError", None)
    if error_type is None:
        return [Row("guard", "non-finite outputs", "-", "not in this build", "", "skipped")]
    rows = []
    net = random_upsampler(sizes.u_check)
    with torch.no_grad():
        net.conv_last.weight.fill_(float("nan"))
    x = lr_tensor(sizes.u_check_lr, seed=2)[0]
    try:
        Upscaler(net, device=device, tile=None)(x)
        rows.append(Row("guard", "NaN weights", "-", "no error", "error naming the model", "FAIL"))
    except error_type as exc:
        rows.append(Row("guard", "NaN weights", "-", f"{type(exc).__name__}", "error naming the model",
                        verdict("MambaIRv2" in str(exc))))
    big = random_upsampler(sizes.u_check)
    with torch.no_grad():  # float32 stays finite, float16 (max 65504) overflows
        big.conv_first.weight.mul_(1e5)
    try:
        out = Upscaler(big, device=device, dtype="fp16", tile=None)(x)
        rows.append(Row("guard", f"float16 overflow, {device.type}", "float32 retry", "finite output" if
                        bool(torch.isfinite(out).all()) else "non-finite output", "finite", verdict(
                            bool(torch.isfinite(out).all()))))
    except (RuntimeError, NotImplementedError) as exc:
        rows.append(Row("guard", f"float16 overflow, {device.type}", "float32 retry", f"error: {exc}"[:80], "finite",
                        "FAIL"))
    return rows


def _golden_folder(work: Path) -> Path:
    from refiner_golden import write_golden_model_folder

    folder = work / "golden_model"
    if not (folder / "mamba_trained.pth").is_file():
        write_golden_model_folder(folder, 12)
    return folder


def check_refiner(device: torch.device, sizes: Sizes, work: Path) -> list[Row]:
    from sr4.refiner.tsdsr import RefinerConfig, TSDSRRefiner
    from sr4.utils.device import resolve_dtype

    folder = _golden_folder(work)
    dtype = resolve_dtype("auto", device)
    x = lr_tensor(sizes.refiner_px, seed=4)
    with torch.no_grad():
        ref_model = TSDSRRefiner.from_model_dir(folder)
        ref = ref_model(x, torch.Generator().manual_seed(5))
        model = TSDSRRefiner.from_model_dir(folder, device=device, dtype=dtype)
        out = model(x.to(device), torch.Generator().manual_seed(5)).float().cpu()
    name = str(dtype).removeprefix("torch.")
    limit = 30.0 if dtype != torch.float32 else 60.0
    value = psnr(out, ref)
    rows = [Row("M", f"refiner (golden-size SD3 + VAE + LoRA), {device.type} {name}, {sizes.refiner_px} px",
                "CPU fp32", f"PSNR {value:.1f} dB", f">= {limit:.0f} dB", verdict(value >= limit))]
    # Exact-statistics VAE tiles: the device runs the same tiles as the CPU (fp32, to see the path, not the dtype).
    config = RefinerConfig(vae_tiling=True, vae_tile_stats="exact", vae_encoder_tile=32, vae_encoder_halo=16,
                           vae_decoder_tile=4, vae_decoder_halo=4)
    pixels = lr_tensor(sizes.refiner_px * 2, seed=6) * 2 - 1
    results = {}
    with torch.no_grad():
        for dev in (torch.device("cpu"), device):
            m = TSDSRRefiner.from_model_dir(folder, device=dev, config=config)
            z = m.encode(pixels.to(dev), torch.Generator().manual_seed(7))
            results[dev.type] = (z.cpu(), m.decode(z).cpu())
    cpu, dev = results["cpu"], results[device.type]
    err = max(rel_err(dev[0], cpu[0]), rel_err(dev[1], cpu[1]))
    rows.append(Row("VAE", f"exact-statistics tiles, {device.type} fp32, {sizes.refiner_px * 2} px",
                    "same tiles, CPU fp32", f"max err {err:.1e}", "<= 1e-3", verdict(err <= 1e-3)))
    return rows


def check_tiling_bounds(device: torch.device, sizes: Sizes, work: Path) -> list[Row]:
    """Working memory (peak minus the inputs and outputs) of latent tiles and VAE tiles at two sizes."""
    from sr4.refiner.tsdsr import RefinerConfig, TSDSRRefiner

    folder = _golden_folder(work)
    # about 4x4 tiles at the smaller size, 8x8 at the larger
    config = RefinerConfig(latent_tile=sizes.bound_latent[0] // 4, latent_overlap=4, vae_tiling=True,
                           vae_decoder_tile=sizes.bound_pixels[0] // 32)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = TSDSRRefiner.from_model_dir(folder, device=device, dtype=dtype, config=config)
    rows = []
    cases = {"latent tiles (M)": sizes.bound_latent, "VAE tiles (decode)": tuple(s // 8 for s in sizes.bound_pixels)}
    for name, sides in cases.items():
        work_mb = []
        for side in sides:
            z = torch.randn(1, 16, side, side, device=device, dtype=dtype)
            io_mb = 2 * z.numel() * z.element_size() / 2**20
            run = model.predict_v if name.startswith("latent") else model.decode
            with torch.no_grad():
                run(z[..., :side // 2, :side // 2])  # warm-up at another size
                with realsize.PeakMemory(device) as mem:
                    out = run(z)
            if not name.startswith("latent"):
                io_mb = (z.numel() * z.element_size() + out.numel() * out.element_size()) / 2**20
            work_mb.append(max(mem.peak_mb - io_mb, 0.0))
            del out
        ratio = work_mb[1] / max(work_mb[0], 1e-6)
        measured = f"{work_mb[0]:.0f} -> {work_mb[1]:.0f} MB ({ratio:.2f}x) for 4x the pixels"
        if device.type == "cuda":
            rows.append(Row("tiling", f"{name}, {device.type}", "4x smaller image", measured, "<= 1.5x",
                            verdict(ratio <= 1.5)))
        else:  # resident memory is too coarse a measure at CI size
            rows.append(Row("tiling", f"{name}, {device.type}", "4x smaller image", measured, "(CUDA only)", "info"))
    return rows


# ----------------------------------------------------------------------------- throughput


def throughput_upsamplers(device: torch.device, sizes: Sizes) -> list[Row]:
    from sr4.pipeline.upscaler import Upscaler

    rows = []
    x = lr_tensor(sizes.u_lr, seed=8)[0]
    for name, kwargs in sizes.u_configs.items():
        up = Upscaler(random_upsampler(kwargs), device=device, tile=None)
        up(x[:, :32, :32])  # warm-up: kernels, numba cache, cuDNN
        with realsize.PeakMemory(device) as mem:
            seconds, _ = realsize.timed(lambda up=up: up(x), device)
        mp = (4 * sizes.u_lr) ** 2 / 1e6
        depth = "x".join(str(d) for d in kwargs["depths"])
        rows.append(Row("U speed", f"MambaIRv2-{name} x4 (depths {depth}), {str(up.dtype).removeprefix('torch.')}, "
                        f"{sizes.u_lr} px LR", "-", f"{seconds / mp:.3f} s/MP, {memory(mem.peak_mb, device)}"))
    return rows


def throughput_snucv(device: torch.device, sizes: Sizes, folder: Path, official: Path | None,
                     deps: Path | None, quick: bool) -> list[Row]:
    from PIL import Image

    from sr4.pipeline.snucv import Pipeline

    pipe = Pipeline.from_model_dir(folder, pipeline="snucv", device=device, seed=realsize.SEED)
    meter = realsize.StageMeter(pipe)
    dtype = str(pipe.refiner.dtype).removeprefix("torch.")
    rows, outputs = [], {}
    pipe(Image.fromarray(realsize.smooth_image(16, 16, 0)))  # warm-up
    meter.take()
    for lr_side in sizes.snucv_lr:
        lr = Image.fromarray(realsize.smooth_image(lr_side, lr_side, seed=lr_side))
        seconds, out = realsize.timed(lambda lr=lr: pipe(lr), device)
        outputs[lr_side] = (lr, out, seconds)
        mp = (4 * lr_side) ** 2 / 1e6
        parts = ", ".join(f"{stage} {t / mp:.2f} s/MP {memory(peak, device)}" for stage, (t, peak) in
                          meter.take().items())
        rows.append(Row("SNUCV speed", f"{4 * lr_side}x{4 * lr_side} output, M {dtype}", "-",
                        f"{seconds / mp:.2f} s/MP total; {parts}"))
    if official is not None:
        lr_side = sizes.snucv_lr[0]
        lr, out, seconds = outputs[lr_side]
        inputs, outs = folder.parent / "official_in", folder.parent / "official_out"
        inputs.mkdir(parents=True, exist_ok=True)
        lr.save(inputs / "lr.png")
        from refiner_golden import GOLDEN_MAMBA

        off = realsize.run_official_snucv(official, folder, inputs, outs, seed=realsize.SEED, device=device.type,
                                          deps=deps, fp32=device.type == "cpu", mamba=GOLDEN_MAMBA if quick else None)
        with Image.open(outs / "lr.png") as im:
            worst, mean = realsize.compare_8bit(np.asarray(im.convert("RGB")), np.asarray(out.convert("RGB")))
        rows.append(Row("official", f"SNUCV code, {4 * lr_side}x{4 * lr_side} output, same folder and input",
                        "sr4", f"official {off['seconds']:.2f} s / sr4 {seconds:.2f} s = "
                        f"{off['seconds'] / seconds:.2f}x; output max diff {worst}, mean {mean:.3f} levels"))
    return rows


# ----------------------------------------------------------------------------- driver


def describe(device: torch.device) -> str:
    import sr4

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        import os

        what = f"CPU ({os.cpu_count()} cores)"
    return f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {what}, torch {torch.__version__}, sr4 {sr4.__version__}"


def print_table(rows: list[Row]) -> None:
    print("| part | check | against | measured | limit | result |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.part} | {r.check} | {r.against} | {r.measured} | {r.limit} | {r.result} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="CI size: tiny models and images")
    p.add_argument("--model-dir", type=Path, help="a SNUCV model folder (default: random weights at real size)")
    p.add_argument("--work", type=Path, help="where model folders are written (default: a temporary folder)")
    p.add_argument("--official", type=Path, help="checkout of dhryougit/NTIRE2025_SR_SNUCV")
    p.add_argument("--deps", type=Path, help="folder with torchvision, einops, cv2 for the official code")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; use --device cpu --quick for the CI-size run", file=sys.stderr)
        return 2
    sizes = quick_sizes() if args.quick else real_sizes()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="sr4_gpu_check_")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"sr4 GPU check, {describe(device)}, {'quick (CI size)' if args.quick else 'real sizes'}")
    rows: list[Row] = []
    steps = {
        "scan": lambda: check_scan(device, sizes),
        "U": lambda: check_upsampler(device, sizes),
        "guard": lambda: check_non_finite_guard(device, sizes),
        "refiner": lambda: check_refiner(device, sizes, work),
        "tiling": lambda: check_tiling_bounds(device, sizes, work),
        "U speed": lambda: throughput_upsamplers(device, sizes),
    }
    for name, step in steps.items():
        try:
            rows += step()
        except Exception as exc:  # one broken path must not hide the others
            traceback.print_exc()
            rows.append(Row(name, "(did not run)", "-", f"{type(exc).__name__}: {exc}"[:200], "", "FAIL"))
    try:
        if args.model_dir:
            folder = args.model_dir
        elif args.quick:
            folder = _golden_folder(work)
        else:
            folder = realsize.write_model_folder(work / "snucv_random")
        rows += throughput_snucv(device, replace(sizes), folder, args.official, args.deps, args.quick)
    except Exception as exc:
        traceback.print_exc()
        rows.append(Row("SNUCV speed", "(did not run)", "-", f"{type(exc).__name__}: {exc}"[:200], "", "FAIL"))
    print()
    print_table(rows)
    failed = [r for r in rows if r.result == "FAIL"]
    print(f"\n{len(rows)} rows, {len(failed)} failed, {time.perf_counter() - start:.0f} s")
    if tmp is not None:
        tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
