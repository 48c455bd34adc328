"""`sr4 upscale INPUT... -o OUTDIR`: upscale files, folders and globs, batch-safe.

Every file is handled on its own: a bad input or an existing output is reported and the batch
goes on; outputs are written atomically (nothing half-written is ever left); the exit status is
1 when any file failed, 2 when the run could not start (bad options, unloadable model).
Under `torchrun --nproc-per-node N` each process takes its share of the sorted file list.
"""

from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
EXT_SUFFIX = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}


def _tile_arg(text: str) -> int | str | None:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("tile must be >= 0 (0 = no tiling)")
    return None if value == 0 else value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if needed)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders (kept in the output)")
    p.add_argument("--model", metavar="FILE|bicubic", help="upsampler checkpoint (MambaIRv2 / -Light, .pth or "
                   ".safetensors), or 'bicubic' for plain bicubic x4; default: sr4's bundled MambaIRv2-Light x4")
    p.add_argument("--outscale", type=_positive_float, metavar="FLOAT",
                   help="final scale relative to the input (resize after the network), e.g. 2")
    p.add_argument("--suffix", default="", help="appended to each output file name (default: none)")
    p.add_argument("--ext", choices=["png", "jpg", "webp", "tiff", "keep"], default="keep",
                   help="output format (default: keep the input's)")
    p.add_argument("--quality", type=int, default=95, choices=range(1, 101), metavar="1-100",
                   help="JPEG/WebP quality (default 95)")
    p.add_argument("--tile", type=_tile_arg, default="auto", metavar="auto|N",
                   help="LR tile size in pixels, 0 for no tiling, auto from free memory (default)")
    p.add_argument("--tile-overlap", type=int, default=16, metavar="N", help="LR pixels tiles share (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda:N (default auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto = fp16 on CUDA, fp32 on CPU")
    p.add_argument("--seed", type=int, default=0, help="seed of the network's random draws (default 0)")
    p.add_argument("--alpha", choices=["bicubic", "network"], default="bicubic",
                   help="upscale transparency with bicubic (default) or with the network (a second pass)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--skip-existing", action="store_true", help="leave existing outputs alone")
    existing.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--max-pixels", type=int, metavar="N",
                   help="largest input accepted, in pixels (default: Pillow's 89,478,485 bomb limit)")
    pipe = p.add_argument_group("two-stage pipelines (upsampler + TSD-SR refiner)")
    pipe.add_argument("--pipeline", choices=["upsampler", "snucv", "tsdsr"], default="upsampler",
                      help="upsampler: network alone (default); snucv: upsampler then refiner; tsdsr: TSD-SR")
    pipe.add_argument("--model-dir", metavar="DIR", help="model folder for snucv/tsdsr (SD3 transformer/vae, LoRA, "
                      "prompt embeddings; mamba_trained.pth for snucv)")
    pipe.add_argument("--latent", choices=["sample", "mean"], default="sample",
                      help="VAE latent: a seeded sample (official) or the mean")
    pipe.add_argument("--color-fix", choices=["none", "wavelet", "adain"], default=None,
                      help="colour correction after the refiner (default: none for snucv, wavelet for tsdsr)")
    pipe.add_argument("--merge-lora", action="store_true",
                      help="merge the LoRA weights into the base weights once (faster; same output within fp error)")
    pipe.add_argument("--vae-tiling", choices=["auto", "on", "off"], default="auto",
                      help="tile the VAE encode/decode (auto: only above 2048x2048 output)")
    pipe.add_argument("--vae-tile-stats", choices=["auto", "exact", "fast", "tsdsr"], default="auto",
                      help="VAE tiles: exact (the whole image's GroupNorm statistics; tiles wait in host memory), "
                           "fast (statistics from a 512 px copy; bounded memory), tsdsr (TSD-SR's own tiled VAE, "
                           "to reproduce its --is_use_tile outputs); auto: exact on CUDA, fast on CPU")
    pipe.add_argument("--vae-encoder-tile", type=_positive_int, default=1024, metavar="PX",
                      help="VAE encoder tile in pixels, without its 32 px halo (TSD-SR's --vae_encoder_tiled_size)")
    pipe.add_argument("--vae-decoder-tile", type=_positive_int, default=224, metavar="LATENTS",
                      help="VAE decoder tile in latents, without its 11-latent halo (--vae_decoder_tiled_size)")
    pipe.add_argument("--latent-tile", type=_positive_int, default=64, metavar="LATENTS",
                      help="transformer tile in latents (TSD-SR's --latent_tiled_size, default 64)")
    pipe.add_argument("--latent-overlap", type=int, default=8, metavar="LATENTS",
                      help="latents neighbouring transformer tiles share (--latent_tiled_overlap, default 8)")
    pipe.add_argument("--process-size", type=_positive_int, default=512, metavar="PX",
                      help="tsdsr: smallest short side the refiner works at (TSD-SR's --process_size, default 512)")
    pipe.add_argument("--upscale", type=_positive_int, default=4, metavar="N",
                      help="tsdsr: upscaling factor (TSD-SR's --upscale, default 4; snucv is x4)")
    pipe.add_argument("--seed-stream", choices=["image", "run"], default="image",
                      help="image: each image seeded afresh with --seed (default; results do not depend on the "
                           "order); run: seeded once, one random stream across the images in order, as an official "
                           "folder run after one torch.manual_seed")


@dataclass
class Job:
    src: Path
    dst: Path


@dataclass
class Report:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _output_suffix(src: Path, ext: str) -> str:
    return src.suffix.lower() if ext == "keep" else EXT_SUFFIX[ext]


def collect_jobs(inputs: list[str], outdir: Path, *, recursive: bool, suffix: str, ext: str,
                 report: Report) -> list[Job]:
    """Expand files, folders and globs into (input, output) pairs; problems go to `report.failed`."""
    found: list[tuple[Path, Path]] = []  # (source, path relative to the output folder)
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(f for f in path.glob(pattern) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(path).parts))
            found += [(f, f.relative_to(path)) for f in files]
        elif path.exists() or path.is_symlink():
            found.append((path, Path(path.name)))
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=recursive))
            files = [m for m in matches if m.is_file()]
            if not files:
                report.failed.append((path, "no file matches this pattern"))
            found += [(m, Path(m.name)) for m in files]
        else:
            report.failed.append((path, "no such file or folder"))
    jobs: list[Job] = []
    claimed: dict[Path, Path] = {}
    for src, rel in found:
        dst = outdir / rel.parent / f"{rel.stem}{suffix}{_output_suffix(src, ext)}"
        key = dst.resolve()
        if key == src.resolve():
            report.failed.append((src, f"output {dst} would overwrite the input itself (use another -o or --suffix)"))
        elif key in claimed:
            if claimed[key] != src.resolve():
                report.failed.append((src, f"output {dst} is also the output of {claimed[key]} (use --suffix or "
                                           "--ext to tell them apart)"))
        else:
            claimed[key] = src.resolve()
            jobs.append(Job(src, dst))
    return jobs


def build_processor(args: argparse.Namespace, device: str):
    """The Upscaler, or the refiner Pipeline, the options ask for."""
    if args.pipeline == "upsampler":
        from sr4.pipeline.upscaler import BICUBIC, BICUBIC_NOTICE, Upscaler

        if args.model == BICUBIC:
            print(f"sr4: note: {BICUBIC_NOTICE}", file=sys.stderr)
        return Upscaler(args.model, tile=args.tile, tile_overlap=args.tile_overlap, device=device,
                        dtype=args.dtype, seed=args.seed, alpha=args.alpha)
    if args.model_dir is None:
        raise ValueError(f"--pipeline {args.pipeline} needs --model-dir DIR (the SD3 / TSD-SR model folder)")
    if args.model is not None:
        raise ValueError(f"--model applies to --pipeline upsampler only; --pipeline {args.pipeline} takes its "
                         "networks from --model-dir")
    from sr4.pipeline.snucv import Pipeline

    color_fix = args.color_fix or ("wavelet" if args.pipeline == "tsdsr" else "none")
    vae_tiling = {"auto": "auto", "on": True, "off": False}[getattr(args, "vae_tiling", "auto")]
    # --tile / --tile-overlap size the upsampler's tiles; the refiner keeps TSD-SR's latent tiles.
    # Options other front ends (sr4 eval --lr-dir) may not have fall back to their defaults.
    options = {"merge_lora": False, "vae_tile_stats": "auto", "vae_encoder_tile": 1024, "vae_decoder_tile": 224,
               "latent_tile": 64, "latent_overlap": 8, "process_size": 512, "upscale": 4, "seed_stream": "image"}
    options = {key: getattr(args, key, default) for key, default in options.items()}
    if args.pipeline == "snucv" and options["upscale"] != 4:
        raise ValueError("--upscale applies to --pipeline tsdsr; snucv upscales x4 (its upsampler's factor)")
    processor = Pipeline.from_model_dir(args.model_dir, pipeline=args.pipeline, latent=args.latent,
                                        color_fix=color_fix, device=device, dtype=args.dtype, seed=args.seed,
                                        vae_tiling=vae_tiling, upsampler_tile=args.tile,
                                        upsampler_tile_overlap=args.tile_overlap, **options)
    processor.alpha_upsampler = args.alpha  # an ImageProcessor rule, the same for every pipeline
    return processor


def _tile_bar(enabled: bool):
    """Progress callback drawing a tile bar for images cut into more than one tile."""
    from tqdm import tqdm

    state: dict = {}

    def progress(done: int, total: int) -> None:
        if not enabled or total <= 1:
            return
        bar = state.get("bar")
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = state["bar"] = tqdm(total=total, desc="tiles", unit="tile", leave=False, position=1)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            state.pop("bar")

    return progress


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sr4.pipeline.sharding import current_shard, shard_device, shard_items

    if args.tile_overlap < 0:
        print("sr4 upscale: --tile-overlap must be >= 0", file=sys.stderr)
        return 2
    try:
        shard = current_shard()
    except ValueError as exc:
        print(f"sr4 upscale: {exc}", file=sys.stderr)
        return 2
    tag = f"[{shard}] " if shard.active else ""
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        print(f"sr4 upscale: {outdir}: output exists and is not a folder", file=sys.stderr)
        return 2
    report = Report()
    jobs = collect_jobs(args.inputs, outdir, recursive=args.recursive, suffix=args.suffix, ext=args.ext,
                        report=report)
    if shard.active:
        jobs = shard_items(jobs, shard, key=lambda j: str(j.src))
        # Input problems are reported by rank 0 only, so each appears once.
        if shard.rank != 0:
            report.failed.clear()
    try:
        processor = build_processor(args, shard_device(args.device))
    except Exception as exc:  # model files and devices fail in many ways; all are fatal, none silent
        print(f"sr4 upscale: {tag}cannot start: {exc}", file=sys.stderr)
        return 2

    interactive = sys.stderr.isatty()
    todo: list[Job] = []
    for job in jobs:
        if job.dst.exists():
            if args.skip_existing:
                report.skipped.append(job.src)
                continue
            if not args.overwrite:
                report.failed.append((job.src, f"output {job.dst} exists (use --overwrite or --skip-existing)"))
                continue
        todo.append(job)
    bar = tqdm(total=len(todo), desc=f"{tag}images", unit="img", disable=not interactive or None)
    try:
        _process(processor, todo, args, report, bar.update, _tile_bar(interactive))
    finally:
        bar.close()
    _print_summary(report, tag)
    return 1 if report.failed else 0


def _process(processor, todo: list[Job], args: argparse.Namespace, report: Report, advance,
             tile_progress) -> None:
    """Read ahead and write behind in two helper threads while the network works on the current image.

    Decoding and PNG/JPEG encoding release the GIL, so on a fast accelerator they no longer
    serialise with the network. At most one image is read ahead and two written behind, so memory
    stays bounded. Each failure is recorded against its file; the rest of the batch goes on.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from sr4.image.io import read_image, write_image

    def collect(job: Job, future: Future) -> None:
        try:
            future.result()
        except Exception as exc:  # the message names the file
            report.failed.append((job.src, str(exc) or type(exc).__name__))
        else:
            report.done.append(job.dst)
        advance(1)

    with ThreadPoolExecutor(1, thread_name_prefix="sr4-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="sr4-write") as writer:
        reads = [reader.submit(read_image, job.src, max_pixels=args.max_pixels) for job in todo[:1]]
        writes: list[tuple[Job, Future]] = []
        for i, job in enumerate(todo):
            current = reads.pop(0)
            if i + 1 < len(todo):
                reads.append(reader.submit(read_image, todo[i + 1].src, max_pixels=args.max_pixels))
            try:
                result = processor.process_image_data(current.result(), outscale=args.outscale,
                                                      progress=tile_progress)
            except Exception as exc:  # one bad file must not stop the batch; the message names it
                report.failed.append((job.src, str(exc) or type(exc).__name__))
                advance(1)
                continue
            writes.append((job, writer.submit(write_image, job.dst, result, quality=args.quality)))
            del result
            while len(writes) > 1:
                collect(*writes.pop(0))
        for pending in writes:
            collect(*pending)


def _print_summary(report: Report, tag: str) -> None:
    print(f"sr4 upscale: {tag}{len(report.done)} done, {len(report.skipped)} skipped, {len(report.failed)} failed")
    for src, message in report.failed:
        text = message if message.startswith(str(src)) else f"{src}: {message}"
        print(f"  FAILED {text}", file=sys.stderr)
    sys.stdout.flush()
