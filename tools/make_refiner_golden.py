"""Golden fixtures for the two-stage pipelines from the OFFICIAL inference code, and sr4's fidelity table.

Usage: python tools/make_refiner_golden.py TSDSR_REPO SNUCV_REPO [--deps DIR] [--out tests/data/golden]

TSDSR_REPO is a checkout of Microtreei/TSD-SR (its ``test/test_tsdsr.py`` is run as a script, with its
``models/autoencoder_kl.py`` and ``utils/vaehook.py``); SNUCV_REPO a checkout of dhryougit/NTIRE2025_SR_SNUCV (its
``models/team04_SNUCV`` package: ``main(model_dir, input_path, output_path, device)`` is called). Nothing of either
is copied: each runs in its own subprocess, on CPU in float32, on a tiny random model folder written in the official
formats (tests/refiner_golden.py, rebuilt by the tests from the seed). ``--deps`` is a folder with what the official
code imports beyond sr4's environment (torchvision, einops, opencv-python-headless), e.g. from
``pip install --no-deps --target DIR torchvision einops opencv-python-headless``.

The driver changes only the surroundings of the official code: its hard-coded "cuda" devices go to the CPU,
SNUCV's float16 modules are moved back to float32 after loading (the weights are float16 numbers, so nothing is
lost), mamba_ssm's CUDA scan is replaced by the step-loop reference scan of tools/make_mambairv2_golden.py,
SNUCV's U gets the tiny configuration, matplotlib (plotting helpers only) is stubbed, and the global RNG is seeded
once where the image loop starts (the official scripts never seed it). Everything else is the official code.

Written: ``refiner_*.png`` (LR inputs and official outputs) and ``refiner.json`` (cases, options, seeds, the model
folder's sha256, the official error of the odd-size case, and the sr4-vs-official table that README.md shows).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_SEED = 12

# name -> pipeline, input images {file: (height, width, seed)}, official options, sr4 options.
CASES: dict[str, dict] = {
    "snucv_160x104": dict(pipeline="snucv", inputs={"lr_160x104.png": (104, 160, 1)}, seed=5,
                          note="SNUCV, LR 160x104 (larger than the 128 px U tile sr4 used to pick on a CPU)"),
    "snucv_thin": dict(pipeline="snucv", inputs={"lr_24x700.png": (24, 700, 2)}, seed=6,
                       note="SNUCV, LR 700x24: a 12 x 350 latent (thin latent tiles)"),
    "snucv_odd": dict(pipeline="snucv", inputs={"lr_21x17.png": (17, 21, 3)}, seed=7,
                      note="SNUCV, odd LR size 21x17 (VAE floors, output resized back)"),
    "snucv_folder_seeded_once": dict(pipeline="snucv", inputs={"a.png": (20, 24, 4), "b.png": (17, 21, 3)}, seed=8,
                                     sr4=dict(seed_stream="run"),
                                     note="SNUCV folder run seeded once, two images"),
    "tsdsr_wavelet": dict(pipeline="tsdsr", inputs={"lr_40x30.png": (30, 40, 9)}, seed=10,
                          note="TSD-SR defaults (wavelet colour fix, process size 512)"),
    "tsdsr_adain": dict(pipeline="tsdsr", inputs={"lr_40x30.png": (30, 40, 9)}, seed=10,
                        official=["--align_method", "adain"], sr4=dict(color_fix="adain"),
                        note="TSD-SR, adain colour fix"),
    "tsdsr_tiled_vae": dict(pipeline="tsdsr", inputs={"lr_40x30.png": (30, 40, 9)}, seed=10,
                            official=["--is_use_tile", "True", "--vae_encoder_tiled_size", "256",
                                      "--vae_decoder_tiled_size", "32"],
                            sr4=dict(vae_tiling=True, vae_tile_stats="tsdsr", vae_encoder_tile=256,
                                     vae_decoder_tile=32),
                            note="TSD-SR's tiled VAE forced on (`--is_use_tile`, encoder tile 256 px, "
                                 "decoder 32 latents)"),
    "tsdsr_x2": dict(pipeline="tsdsr", inputs={"lr_40x30.png": (30, 40, 9)}, seed=10,
                     official=["--upscale", "2"], sr4=dict(upscale=2), note="TSD-SR `--upscale 2`"),
}
# Where official SNUCV stops: an odd latent side meets SD3's 2x2 patches.
CRASH_CASE = dict(pipeline="snucv", inputs={"lr_33x27.png": (27, 33, 11)}, seed=5)


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(2, height // 4), max(2, width // 4), generator=gen)
    img = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    img = img + 0.05 * torch.randn(img.shape, generator=gen)
    return (img[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- inside the official subprocesses


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package="__path__" in attrs)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _common_stubs(deps: str | None) -> None:
    if deps:
        sys.path.insert(0, deps)
    # torchvision's compiled operators are not needed (only transforms / utils are used) and may not load
    _stub("torchvision._meta_registrations")


def _cpu_only() -> None:
    """Send the official code's hard-coded CUDA devices to the CPU."""
    import torch
    from torch import nn

    def cpu(value):
        if isinstance(value, str) and value.startswith("cuda"):
            return "cpu"
        if isinstance(value, torch.device) and value.type == "cuda":
            return torch.device("cpu")
        return value

    def wrap(fn, *, method: bool):
        def wrapper(*args, **kwargs):
            start = 1 if method else 0
            args = args[:start] + tuple(cpu(a) for a in args[start:])
            for key in ("device", "map_location"):
                if key in kwargs:
                    kwargs[key] = cpu(kwargs[key])
            return fn(*args, **kwargs)
        return wrapper

    torch.Tensor.to = wrap(torch.Tensor.to, method=True)
    nn.Module.to = wrap(nn.Module.to, method=True)
    for name in ("zeros", "tensor", "load", "ones", "empty"):
        setattr(torch, name, wrap(getattr(torch, name), method=False))
    torch.cuda.current_device = lambda: 0


def _seeding_tqdm(seed: int) -> None:
    """TSD-SR iterates its images through tqdm after loading everything: seed the global RNG there, once."""
    import torch

    class Bar:
        def __init__(self, iterable=None, *args, **kwargs):
            self.iterable = iterable

        def __iter__(self):
            torch.manual_seed(seed)
            return iter(self.iterable)

        def update(self, n=1):
            pass

        def close(self):
            pass

    import tqdm

    tqdm.tqdm = Bar  # taken by the script's `from tqdm import tqdm`


def run_official_tsdsr(repo: Path, model: Path, inputs: Path, outputs: Path, seed: int, extra: list[str],
                       deps: str | None) -> None:
    _common_stubs(deps)
    _seeding_tqdm(seed)
    os.chdir(repo)
    sys.path.insert(0, str(repo))
    import torch
    import utils.device as devices  # TSD-SR's device module: its GroupNorm summary puts a tensor on .device

    devices.device = torch.device("cpu")
    sys.argv = ["test_tsdsr.py", "--pretrained_model_name_or_path", str(model), "--lora_dir", str(model),
                "--embedding_dir", str(model), "-i", str(inputs), "-o", str(outputs),
                "--device", "cpu", "--mixed_precision", "fp32", *extra]
    runpy.run_path(str(repo / "test" / "test_tsdsr.py"), run_name="__main__")


def run_official_snucv(repo: Path, model: Path, inputs: Path, outputs: Path, seed: int, deps: str | None, *,
                       mamba: dict | None | str = "golden", scan=None, device: str = "cpu",
                       fp32: bool = True) -> float:
    """Run SNUCV's `main` on `inputs`; returns the seconds its image loop (`io.run`) took.

    mamba: MambaIRv2 keyword arguments for its U ("golden": the golden fixtures' tiny one; None: SNUCV's own,
    MambaIRv2-B). scan: the stand-in for mamba_ssm's `selective_scan_fn` (default: the step-loop reference).
    device "cpu" sends SNUCV's hard-coded CUDA devices to the CPU; fp32 moves its float16 SD3 parts to float32."""
    import time

    _common_stubs(deps)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(ROOT / "tests"))
    from make_mambairv2_golden import step_loop_scan
    from refiner_golden import GOLDEN_MAMBA

    for pkg in ("mamba_ssm", "mamba_ssm.ops"):
        _stub(pkg, __path__=[])
    _stub("mamba_ssm.ops.selective_scan_interface", selective_scan_fn=scan or step_loop_scan)
    import diffusers  # noqa: F401  (it probes for matplotlib: import it before the stub exists)

    _stub("matplotlib", __path__=[])
    _stub("matplotlib.pyplot")
    work = Path(tempfile.mkdtemp(prefix="snucv_cwd_"))  # its logger writes into the working folder
    os.chdir(work)
    sys.path.insert(0, str(repo))
    import functools

    import torch

    if device == "cpu":
        _cpu_only()
    import models.team04_SNUCV.io as snucv_io
    import models.team04_SNUCV.model as snucv_model

    if mamba is not None:
        kwargs = GOLDEN_MAMBA if mamba == "golden" else mamba
        snucv_model.MambaIRv2 = functools.partial(snucv_model.MambaIRv2, **kwargs)
    official_run = snucv_io.run
    seconds = []

    def run_seeded(net, *args, **kwargs):
        if fp32:
            net.float()  # SD3 parts were loaded in float16; their values are float16 numbers, so this is exact
            net.weight_dtype = torch.float32
            net.timesteps = net.timesteps.float()
            net.prompt_embeds = net.prompt_embeds.float()
            net.pooled_prompt_embeds = net.pooled_prompt_embeds.float()
        torch.manual_seed(seed)
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = official_run(net, *args, **kwargs)
        if device != "cpu":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        return result

    snucv_io.run = run_seeded
    snucv_io.main(str(model), str(inputs), str(outputs), device=torch.device(device))
    shutil.rmtree(work, ignore_errors=True)
    return seconds[0]


# ----------------------------------------------------------------------------- driver


def _official(which: str, args: argparse.Namespace, model: Path, inputs: Path, outputs: Path, seed: int,
              extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, __file__, "--child", which, str(args.tsdsr_repo if which == "tsdsr" else args.snucv_repo),
           str(model), str(inputs), str(outputs), str(seed)]
    if args.deps:
        cmd += ["--deps", str(args.deps)]
    cmd += ["--extra", json.dumps(extra)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _sr4_outputs(case: dict, model: Path, inputs: dict[str, Path], options: dict) -> dict[str, np.ndarray]:
    import torch
    from PIL import Image

    from sr4.pipeline.two_stage import Pipeline

    options = {**case.get("sr4", {}), **options}
    pipe = Pipeline.from_model_dir(model, pipeline=case["pipeline"], device="cpu", seed=case["seed"], **options)
    outs = {}
    with torch.no_grad():
        for name in sorted(inputs):
            with Image.open(inputs[name]) as im:
                outs[name] = np.asarray(pipe(im.convert("RGB")), dtype=np.int16)
    return outs


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[int, float]:
    diffs = [np.abs(a[k] - b[k]) for k in sorted(a)]
    return int(max(d.max() for d in diffs)), float(np.concatenate([d.ravel() for d in diffs]).mean())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        parser = argparse.ArgumentParser()
        parser.add_argument("--child", choices=["tsdsr", "snucv"])
        for name in ("repo", "model", "inputs", "outputs"):
            parser.add_argument(name, type=Path)
        parser.add_argument("seed", type=int)
        parser.add_argument("--deps")
        parser.add_argument("--extra", default="[]", help="official options, a JSON list")
        a = parser.parse_args()
        if a.child == "tsdsr":
            run_official_tsdsr(a.repo, a.model, a.inputs, a.outputs, a.seed, json.loads(a.extra), a.deps)
        else:
            run_official_snucv(a.repo, a.model, a.inputs, a.outputs, a.seed, a.deps)
        return 0

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tsdsr_repo", type=Path)
    parser.add_argument("snucv_repo", type=Path)
    parser.add_argument("--deps", type=Path, help="folder with torchvision, einops, cv2 for the official code")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "golden")
    parser.add_argument("--only", nargs="*", help="case names to (re)make; default all")
    parser.add_argument("--table-only", action="store_true", help="keep the fixtures, recompute sr4's table")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from PIL import Image
    from refiner_golden import folder_digest, write_golden_model_folder

    work = Path(tempfile.mkdtemp(prefix="sr4_refiner_golden_"))
    model = write_golden_model_folder(work / "model", MODEL_SEED)
    record_path = args.out / "refiner.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.update(model_seed=MODEL_SEED, model_sha256=folder_digest(model))
    record.setdefault("cases", {})
    for name, case in CASES.items():
        if args.table_only or args.only and name not in args.only:
            continue
        inputs, outputs = work / name / "in", work / name / "out"
        inputs.mkdir(parents=True)
        for file, (h, w, seed) in case["inputs"].items():
            Image.fromarray(smooth_image(h, w, seed)).save(inputs / file)
        done = _official(case["pipeline"], args, model, inputs, outputs, case["seed"], case.get("official", []))
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-6000:], file=sys.stderr)
            raise SystemExit(f"official {case['pipeline']} failed on case {name}")
        files = {}
        for file in case["inputs"]:
            lr_name, out_name = f"refiner_{name}_{file}", f"refiner_{name}_{file[:-4]}_official.png"
            shutil.copyfile(inputs / file, args.out / lr_name)
            shutil.copyfile(outputs / file, args.out / out_name)
            files[file] = {"input": lr_name, "official": out_name}
        record["cases"][name] = dict(pipeline=case["pipeline"], seed=case["seed"], note=case["note"],
                                     official_args=case.get("official", []), sr4_options=case.get("sr4", {}),
                                     files=files)
        print(f"{name}: official run done")
    if not args.table_only:
        record["official_snucv_33x27"] = _crash_message(args, model, work)
    record_path.write_text(json.dumps(record, indent=1) + "\n")  # the official part, kept if sr4 fails below
    fidelity_table(record, args.out, model)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _crash_message(args: argparse.Namespace, model: Path, work: Path) -> str:
    """What official SNUCV says on an LR size whose latent has an odd side (sr4 pads it)."""
    from PIL import Image

    crash_in = work / "crash" / "in"
    crash_in.mkdir(parents=True)
    for file, (h, w, seed) in CRASH_CASE["inputs"].items():
        Image.fromarray(smooth_image(h, w, seed)).save(crash_in / file)
    done = _official("snucv", args, model, crash_in, work / "crash" / "out", CRASH_CASE["seed"], [])
    last = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return last[-1] if done.returncode else "ran"


def fidelity_table(record: dict, out: Path, model: Path) -> None:
    """sr4 (defaults, plus the options matching the official run) against each official output, and both tiled
    VAE modes against the untiled result; printed as README's table and stored in the record."""
    rows = []
    for name, case in record["cases"].items():
        case["note"] = CASES.get(name, case)["note"]
        inputs = {file: out / f["input"] for file, f in case["files"].items()}
        official = {file: _read(out / f["official"]) for file, f in case["files"].items()}
        mine = _sr4_outputs({**case, "sr4": case["sr4_options"]}, model, inputs, {})
        worst, mean = _distance(mine, official)
        case["sr4_vs_official"] = {"max": worst, "mean": round(mean, 4)}
        rows.append((name, case["note"], case["sr4_options"], worst, mean))
    tiled = record["cases"].get("tsdsr_tiled_vae")
    untiled = record["cases"].get("tsdsr_wavelet")
    if tiled and untiled:
        inputs = {file: out / f["input"] for file, f in untiled["files"].items()}
        official_untiled = {file: _read(out / f["official"]) for file, f in untiled["files"].items()}
        official_tiled = {file: _read(out / f["official"]) for file, f in tiled["files"].items()}
        base = {**untiled, "sr4": {}}
        exact = _sr4_outputs(base, model, inputs, dict(vae_tiling=True, vae_tile_stats="exact", vae_encoder_tile=256,
                                                       vae_decoder_tile=32))
        record["tiled_vae_vs_untiled"] = {
            "tsdsr (official)": _rounded(_distance(official_tiled, official_untiled)),
            "tsdsr (sr4)": _rounded(_distance(_sr4_outputs({**tiled, "sr4": tiled["sr4_options"]}, model, inputs, {}),
                                              official_untiled)),
            "exact (sr4)": _rounded(_distance(exact, official_untiled)),
        }
        record["tiled_vae_encoder_latent_mean_vs_untiled"] = _latent_distances(model, inputs)
    print("| case | sr4 options | max | mean |")
    print("|---|---|---|---|")
    for _name, note, options, worst, mean in rows:
        shown = ", ".join(f"{k}={_literal(v)}" for k, v in options.items())
        print(f"| {note} | {f'`{shown}`' if shown else 'defaults'} | {worst} | {f'{mean:.4f}' if mean else '0'} |")
    print(json.dumps(record.get("tiled_vae_vs_untiled"), indent=1))
    print(json.dumps(record.get("tiled_vae_encoder_latent_mean_vs_untiled"), indent=1))


def _latent_distances(model: Path, inputs: dict[str, Path]) -> dict:
    """Encoder latent mean of each tiled mode (encoder tile 256 px) against the untiled encoder, on the TSD-SR
    working-size input of the tiled-VAE case."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from sr4.pipeline.tsdsr import tsdsr_process_size
    from sr4.refiner.tsdsr import RefinerConfig, TSDSRRefiner

    with Image.open(next(iter(inputs.values()))) as im:
        lr = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    x = F.interpolate(lr, size=tsdsr_process_size(*lr.shape[-2:]), mode="bicubic", align_corners=False)
    x = (x * 2 - 1).clamp(-1, 1)
    out = {}
    with torch.no_grad():
        refiner = TSDSRRefiner.from_model_dir(model)
        reference = refiner._encoder_moments(x, tiled=False).chunk(2, dim=1)[0]
        for mode in ("tsdsr", "exact"):
            refiner.config = RefinerConfig(vae_tile_stats=mode, vae_encoder_tile=256)
            mean = refiner._encoder_moments(x, tiled=True).chunk(2, dim=1)[0]
            diff = (mean - reference).abs()
            out[mode] = {"max": round(diff.max().item(), 4), "mean": round(diff.mean().item(), 4),
                         "latent_std": round(reference.std().item(), 4)}
    return out


def _literal(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _rounded(d: tuple[int, float]) -> dict:
    return {"max": d[0], "mean": round(d[1], 4)}


if __name__ == "__main__":
    sys.exit(main())
