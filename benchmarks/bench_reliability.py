"""Interrupt `sr4 upscale` at random points and check that no file is ever lost or left half-written.

`run` builds a random batch (PNG 8/16-bit, gray, RGBA, JPEG, WebP, TIFF, BMP, GIF, animated PNG/WebP,
corrupt and empty files; sizes 8-96 px, and two of 384 px whose 1536 px outputs take a while to encode)
and an output folder that already holds files the user made (one of them at an output's name). An
uninterrupted run gives the reference outputs. Then, trial after trial, the batch is run into a fresh
copy of that output folder and stopped by SIGINT, SIGTERM or SIGKILL at a random moment (uniform over
what is left of the batch at the reference run's pace), up to `--stops` times in a row, each time
resumed with `--skip-existing`; a last uninterrupted `--skip-existing` run finishes the batch. After
every trial it checks:

* every output exists, decodes (all frames) and is bit-identical to the reference output;
* no temporary file is left (sr4 sweeps those of killed runs when it starts again);
* no file that existed before (inputs, the user's files) changed;
* exit codes: 130 / 143 after SIGINT / SIGTERM, 1 for the finished batch (the corrupt files).

`write-cost` measures what verified writing costs: `sr4.image.io.write_image` (encode through a file
object without fileno, fsync, size check, no-replace link) against Pillow saving to the path
directly (which is what let a full disk truncate JPEGs silently), and what decoding the file again to
check it would add.

    python benchmarks/bench_reliability.py run [--trials 10] [--stops 2] [--images 24] [--seed 0]
    python benchmarks/bench_reliability.py run --model default        # the bundled network (slower)
    python benchmarks/bench_reliability.py write-cost [--size 2048] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


# ---------------------------------------------------------------------- the batch


def make_batch(folder: Path, count: int, rng: random.Random) -> None:
    from PIL import Image

    from sr4.image.io import write_image

    npr = np.random.default_rng(rng.randrange(2**32))
    kinds = ["png", "png16", "gray", "rgba", "jpg", "webp", "tiff", "bmp", "gif", "apng", "awebp"]
    for i in range(count):
        kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
        h, w = rng.randint(8, 96), rng.randint(8, 96)
        if i in (count // 3, 2 * count // 3):  # two large ones: their writes take long enough to be interrupted
            kind, h, w = ("png", "tiff")[i == 2 * count // 3], 384, 384
        smooth = np.linspace(0, 1, w)[None, :, None] * np.linspace(0.3, 1, h)[:, None, None]
        base = (smooth * 200 + npr.integers(0, 56, (h, w, 3))).astype(np.uint8)
        name = folder / f"img{i:03d}"
        if kind == "png16":
            write_image(name.with_suffix(".png"), base.astype(np.uint16) * 257)
        elif kind == "gray":
            write_image(name.with_suffix(".png"), base[:, :, :1])
        elif kind == "rgba":
            write_image(name.with_suffix(".png"), np.concatenate([base, base[:, :, :1]], axis=2))
        elif kind in ("apng", "awebp"):
            frames = [Image.fromarray(np.roll(base, k * 3, axis=1)) for k in range(3)]
            frames[0].save(name.with_suffix(".png" if kind == "apng" else ".webp"), save_all=True,
                           append_images=frames[1:], duration=[80, 120, 160], loop=0, lossless=True)
        else:
            write_image(name.with_suffix("." + ("png" if kind == "png" else kind)), base)
    # Bad inputs the batch must report and go on.
    good = next(folder.glob("*.png")).read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")


def seed_output_folder(folder: Path, batch: Path) -> None:
    """Files the user already had in the output folder: none may change."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("the user's notes\n")
    (folder / ".hidden.png").write_bytes(b"hidden")
    first = sorted(batch.glob("*.jpg"))[0]
    (folder / first.name).write_bytes(b"the user's own file at an output name")  # kept by --skip-existing


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temps(folder: Path) -> list[Path]:
    from sr4.utils.atomic import is_temp_name

    return [p for p in folder.rglob("*") if is_temp_name(p.name)] if folder.exists() else []


def command(batch: Path, out: Path, model: str, *extra: str) -> list[str]:
    model_args = ["--model", "bicubic"] if model == "bicubic" else ["--tile", "32"]  # fixed tiles: same output
    return [sys.executable, "-m", "sr4", "upscale", str(batch), "-o", str(out), *model_args, *extra]


def timed_first_output(cmd: list[str], out: Path, env: dict) -> tuple[float, float, int]:
    """(seconds to the first output file, seconds in all, exit code) of one uninterrupted run."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    first = None
    before = set(os.listdir(out)) if out.exists() else set()
    while proc.poll() is None:
        if first is None and out.exists() and any(n not in before and not n.startswith(".") for n in os.listdir(out)):
            first = time.perf_counter() - start
        time.sleep(0.01)
    total = time.perf_counter() - start
    return (first or total), total, proc.returncode


def verify(out: Path, reference: Path, expected: list[str], user_files: dict[str, str]) -> tuple[int, list[str]]:
    from sr4.image.io import read_image

    problems, verified = [], 0
    for name in expected:
        path, ref = out / name, reference / name
        if not path.exists():
            problems.append(f"missing {name}")
            continue
        try:
            read_image(path, frames="all")
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a finding
            problems.append(f"undecodable {name}: {exc}")
            continue
        if path.read_bytes() != ref.read_bytes():
            problems.append(f"differs from the uninterrupted run: {name}")
            continue
        verified += 1
    now = hashes(out)
    problems += [f"user file changed: {n}" for n, h in user_files.items() if now.get(n) != h]
    return verified, problems


def run_trials(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sr4-reliability-"))
    batch, seeded, reference = work / "in", work / "seeded", work / "reference"
    for p in (batch, seeded, reference):
        shutil.rmtree(p, ignore_errors=True)
    batch.mkdir(parents=True)
    make_batch(batch, args.images, rng)
    seed_output_folder(seeded, batch)
    inputs_before = hashes(batch)
    user_files = hashes(seeded)

    shutil.copytree(seeded, reference)
    first, total, code = timed_first_output(command(batch, reference, args.model, "--skip-existing"), reference, env)
    expected = sorted(n for n in hashes(reference) if n not in user_files)
    print(f"batch: {len(inputs_before)} files ({args.images} images + 3 corrupt) in {batch}; reference run "
          f"{total:.1f} s (first output after {first:.1f} s), exit {code}, {len(expected)} outputs")

    runs = attempts = interruptions = verified_total = 0
    temps_after_stop = temps_after_rerun = changed = 0
    by_signal: dict[str, int] = {}
    codes: dict[str, set[int]] = {}
    failures: list[str] = []
    for trial in range(args.trials):
        out = work / f"trial{trial:02d}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(seeded, out)
        for _ in range(rng.randint(1, args.stops)):
            name = rng.choice(sorted(SIGNALS))
            # Somewhere in what is left of the batch: start-up, then the reference pace over the images to do.
            left = 1 - sum((out / n).exists() for n in expected) / len(expected)
            delay = rng.uniform(first * 0.9, first + (total - first) * left)
            attempts += 1
            proc = subprocess.Popen(command(batch, out, args.model, "--skip-existing"), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env)
            time.sleep(delay)
            stopped = proc.poll() is None
            if stopped:
                proc.send_signal(SIGNALS[name])
            proc.wait()
            runs += 1
            if stopped:
                interruptions += 1
                by_signal[name] = by_signal.get(name, 0) + 1
                # As a shell reports it: a process a signal ended shows 128 + N too.
                codes.setdefault(name, set()).add(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode)
            temps_after_stop += len(temps(out))
        final = subprocess.run(command(batch, out, args.model, "--skip-existing"), capture_output=True, text=True,
                               env=env)
        runs += 1
        codes.setdefault("finished", set()).add(final.returncode)
        temps_after_rerun += len(temps(out))
        verified, problems = verify(out, reference, expected, user_files)
        verified_total += verified
        changed += sum(1 for p in problems if p.startswith("user file changed"))
        if hashes(batch) != inputs_before:
            problems.append("an input changed")
            changed += 1
        failures += [f"trial {trial}: {p}" for p in problems]
        print(f"trial {trial + 1}/{args.trials}: {verified}/{len(expected)} outputs verified, "
              f"{len(problems)} problems")
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    print()
    print(f"runs                               {runs}")
    print(f"interruptions                      {interruptions} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(by_signal.items()))}; {attempts - interruptions} more "
          "signals came after the run had ended)")
    print(f"exit codes                         {', '.join(f'{k}: {sorted(v)}' for k, v in sorted(codes.items()))}")
    print(f"outputs verified                   {verified_total} of {len(expected) * args.trials} "
          "(decodable, bit-identical to the uninterrupted run)")
    print(f"temp files right after a stop      {temps_after_stop} (swept by the next run)")
    print(f"temp files left after the reruns   {temps_after_rerun}")
    print(f"pre-existing files changed         {changed}")
    for line in failures[:20]:
        print("  " + line)
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    ok = (not failures and temps_after_rerun == 0 and verified_total == len(expected) * args.trials
          and codes.get("SIGINT", {130}) <= {130} and codes.get("SIGTERM", {143}) <= {143})
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


# ---------------------------------------------------------------------- write cost


def write_cost(args: argparse.Namespace) -> int:
    from PIL import Image

    from sr4.image.io import read_image, write_image

    rng = np.random.default_rng(0)
    side = args.size
    smooth = np.linspace(0, 1, side)[None, :, None] * np.linspace(0.2, 1, side)[:, None, None]
    pixels = (smooth * 230 + rng.integers(0, 25, (side, side, 3))).astype(np.uint8)
    folder = Path(tempfile.mkdtemp(prefix="sr4-write-cost-"))
    print(f"{side}x{side} RGB, best of {args.repeats} (seconds); ratio = sr4 / Pillow to the path")
    print("| format | Pillow save(path) | + fsync | sr4 write_image (verified) | ratio | decode check would add |")
    print("|---|---|---|---|---|---|")
    try:
        for ext in ("png", "jpg", "webp", "tiff"):
            kwargs = {"quality": 95} if ext in ("jpg", "webp") else {"compression": "tiff_deflate"} \
                if ext == "tiff" else {}
            img = Image.fromarray(pixels)
            times: dict[str, list[float]] = {"pil": [], "pil_fsync": [], "sr4": [], "decode": []}
            for r in range(args.repeats):
                for key in ("pil", "pil_fsync", "sr4"):  # interleaved, so load hits all three alike
                    path = folder / f"{key}{r}.{ext}"
                    start = time.perf_counter()
                    if key == "sr4":
                        write_image(path, pixels, quality=95, overwrite=False)
                    else:
                        img.save(path, **kwargs)
                        if key == "pil_fsync":
                            with open(path, "rb+") as fh:
                                os.fsync(fh.fileno())
                    times[key].append(time.perf_counter() - start)
                start = time.perf_counter()
                read_image(folder / f"sr4{r}.{ext}")
                times["decode"].append(time.perf_counter() - start)
            best = {k: min(v) for k, v in times.items()}
            print(f"| {ext} | {best['pil']:.3f} | {best['pil_fsync']:.3f} | {best['sr4']:.3f} | "
                  f"{best['sr4'] / best['pil']:.2f} | +{best['decode']:.3f} ({best['decode'] / best['sr4']:.0%}) |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("run", help="interrupt batches at random points and verify every file")
    run.add_argument("--trials", type=int, default=10)
    run.add_argument("--stops", type=int, default=2, help="most interruptions in a row per trial (default 2)")
    run.add_argument("--images", type=int, default=24)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--model", choices=["bicubic", "default"], default="bicubic")
    run.add_argument("--workdir", help="keep the files here (default: a temporary folder, removed)")
    run.add_argument("--keep", action="store_true", help="keep every trial's output folder")
    cost = sub.add_parser("write-cost", help="time verified writes against plain Pillow saves")
    cost.add_argument("--size", type=int, default=2048)
    cost.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    return run_trials(args) if args.what == "run" else write_cost(args)


if __name__ == "__main__":
    sys.exit(main())
