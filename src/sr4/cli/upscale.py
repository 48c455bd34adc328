"""`sr4 upscale INPUT... -o OUTDIR`: upscale files, folders and globs, batch-safe.

Every file is handled on its own: a bad input or an existing output is reported and the batch
goes on; outputs are written atomically and verified (nothing half-written is ever left, nothing
the run did not write is replaced, no input is ever an output: `sr4.pipeline.batch`).
Exit status: 0 all done, 1 some file failed, 2 the run could not start (bad options, no images,
unwritable output folder, unloadable model), 128 + N when signal N stopped it (130 SIGINT,
143 SIGTERM; the image being written is finished, temporary files are removed, the summary is
printed). Under `torchrun --nproc-per-node N` each process takes its share of the sorted file list.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from sr4.image.files import OUTPUT_SUFFIXES, describe_suffixes

#: largest --outscale (final size / input size): x4 networks, resized up to 4 times more.
MAX_OUTSCALE = 16.0


def int_at_least(text: str, minimum: int, what: str) -> int:
    """argparse type helper: `text` as an int >= `minimum`, else a usage error naming `what`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, at least {minimum}, got {text!r}")
    return value


def _tile_arg(text: str) -> int | str | None:
    if text == "auto":
        return "auto"
    value = int_at_least(text, 0, "'auto' or a tile side in pixels (0: no tiling)")
    return None if value == 0 else value


def positive_int(text: str) -> int:
    return int_at_least(text, 1, "a positive whole number")


def _outscale_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_OUTSCALE):
        raise argparse.ArgumentTypeError(f"expected a number above 0 and at most {MAX_OUTSCALE:g}, got {text!r}")
    return value


def _max_pixels_arg(text: str) -> int:
    return int_at_least(text, 1, "a number of pixels")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if needed)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders (kept in the output)")
    p.add_argument("--model", metavar="FILE|bicubic", help="upsampler checkpoint (MambaIRv2 / -Light, .pth or "
                   ".safetensors), or 'bicubic' for plain bicubic x4; default: sr4's bundled MambaIRv2-Light x4")
    p.add_argument("--outscale", type=_outscale_arg, metavar="FLOAT",
                   help=f"final scale relative to the input (resize after the network), e.g. 2; at most "
                        f"{MAX_OUTSCALE:g}")
    p.add_argument("--suffix", default="", help="appended to each output file name (default: none)")
    p.add_argument("--ext", choices=[*OUTPUT_SUFFIXES, "keep"], default="keep",
                   help="output format (default: keep the input's); animations need png, webp, gif or tiff")
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
    existing.add_argument("--overwrite", action="store_true",
                          help="replace existing outputs (never an input of the run, never a folder)")
    p.add_argument("--max-pixels", type=_max_pixels_arg, metavar="N",
                   help="largest input accepted, in pixels, all frames of an animation together "
                        "(default: Pillow's 89,478,485 bomb limit)")
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
    pipe.add_argument("--vae-encoder-tile", type=positive_int, default=1024, metavar="PX",
                      help="VAE encoder tile in pixels, without its 32 px halo (TSD-SR's --vae_encoder_tiled_size)")
    pipe.add_argument("--vae-decoder-tile", type=positive_int, default=224, metavar="LATENTS",
                      help="VAE decoder tile in latents, without its 11-latent halo (--vae_decoder_tiled_size)")
    pipe.add_argument("--latent-tile", type=positive_int, default=64, metavar="LATENTS",
                      help="transformer tile in latents (TSD-SR's --latent_tiled_size, default 64)")
    pipe.add_argument("--latent-overlap", type=int, default=8, metavar="LATENTS",
                      help="latents neighbouring transformer tiles share (--latent_tiled_overlap, default 8)")
    pipe.add_argument("--process-size", type=positive_int, default=512, metavar="PX",
                      help="tsdsr: smallest short side the refiner works at (TSD-SR's --process_size, default 512)")
    pipe.add_argument("--upscale", type=positive_int, default=4, metavar="N",
                      help="tsdsr: upscaling factor (TSD-SR's --upscale, default 4; snucv is x4)")
    pipe.add_argument("--seed-stream", choices=["image", "run"], default="image",
                      help="image: each image seeded afresh with --seed (default; results do not depend on the "
                           "order); run: seeded once, one random stream across the images in order, as an official "
                           "folder run after one torch.manual_seed")


def validate_options(args: argparse.Namespace) -> str | None:
    """What is wrong with options argparse cannot check alone, or None (checked before any work)."""
    seps = {"/", "\\", os.sep, os.altsep or "/", "\0"}
    if any(sep in args.suffix for sep in seps):
        return f"--suffix {args.suffix!r}: path separators are not allowed (outputs stay inside -o)"
    if args.tile_overlap < 0:
        return "--tile-overlap must be >= 0"
    if not -(2**63) <= args.seed < 2**64:
        return f"--seed {args.seed}: out of range (0 to 2**64 - 1)"
    return None


def build_processor(args: argparse.Namespace, device: str):
    """The Upscaler, or the refiner Pipeline, the options ask for."""
    if args.pipeline == "upsampler":
        from sr4.models.bicubic import BICUBIC, BICUBIC_NOTICE
        from sr4.pipeline.upscaler import Upscaler

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

    from sr4.pipeline import batch
    from sr4.pipeline.sharding import current_shard, shard_device, shard_items
    from sr4.utils.atomic import probe_writable, sweep_stale_temps
    from sr4.utils.signals import stop_on_signals

    problem = validate_options(args)
    if problem:
        print(f"sr4 upscale: {problem}", file=sys.stderr)
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
    report = batch.Report()
    found = batch.collect_inputs(args.inputs, recursive=args.recursive, report=report, outdir=outdir)
    if not found:
        _print_failures(report)
        print(f"sr4 upscale: {tag}no images found in {' '.join(args.inputs)} ({describe_suffixes()})",
              file=sys.stderr)
        return 2
    problem = probe_writable(outdir)
    if problem:
        print(f"sr4 upscale: {problem}", file=sys.stderr)
        return 2
    jobs = batch.plan_jobs(found, outdir, suffix=args.suffix, ext=args.ext, report=report)
    for folder in batch.output_folders(jobs, outdir):
        removed = sweep_stale_temps(folder)
        if removed:
            print(f"sr4 upscale: {tag}removed {len(removed)} temporary file(s) left in {folder} by an "
                  "interrupted run", file=sys.stderr)
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

    options = batch.BatchOptions(outscale=args.outscale, max_pixels=args.max_pixels, quality=args.quality,
                           skip_existing=args.skip_existing, overwrite=args.overwrite)
    todo = batch.select_todo(jobs, options, report)
    interactive = sys.stderr.isatty()
    bar = tqdm(total=len(todo), desc=f"{tag}images", unit="img", disable=not interactive or None)

    def say(text: str) -> None:
        tqdm.write(f"sr4 upscale: {tag}{text}", file=sys.stderr)

    try:
        with stop_on_signals():
            stop = batch.process_jobs(processor, todo, options, report, advance=bar.update,
                                tile_progress=_tile_bar(interactive), say=say)
    finally:
        bar.close()
    _print_summary(report, tag, stop)
    if stop is not None:
        return stop.exit_code()
    return 1 if report.failed else 0


def _print_summary(report, tag: str, stop=None) -> None:  # noqa: ANN001 - sr4.pipeline.batch.Report, Interrupted
    counts = f"{len(report.done)} done, {len(report.skipped)} skipped, {len(report.failed)} failed"
    if stop is None:
        print(f"sr4 upscale: {tag}{counts}")
    else:
        print(f"sr4 upscale: {tag}stopped by {stop.name}: {counts}, {len(report.unfinished)} not finished "
              "(run again with --skip-existing to finish)")
    _print_failures(report)
    sys.stdout.flush()


def _print_failures(report) -> None:  # noqa: ANN001 - sr4.pipeline.batch.Report
    for src, message in report.failed:
        text = message if message.startswith(str(src)) else f"{src}: {message}"
        print(f"  FAILED {text}", file=sys.stderr)
