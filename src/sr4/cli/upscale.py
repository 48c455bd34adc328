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
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sr4.cli import options
from sr4.cli.options import (
    MAX_OUTSCALE,
    add_device,
    add_output,
    add_processor,
    int_at_least,
    outscale_arg,
)
from sr4.image.files import OUTPUT_SUFFIXES, describe_suffixes

if TYPE_CHECKING:
    from sr4.pipeline.base import ImageProcessor


def _max_pixels_arg(text: str) -> int:
    return int_at_least(text, 1, "a number of pixels")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    add_output(p, required=True, help="output folder (created if needed)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders (kept in the output)")
    p.add_argument("--outscale", type=outscale_arg, metavar="FLOAT",
                   help=f"final scale relative to the input (resize after the network), e.g. 2; at most "
                        f"{MAX_OUTSCALE:g}")
    p.add_argument("--suffix", default="", help="appended to each output file name (default: none)")
    p.add_argument("--ext", choices=[*OUTPUT_SUFFIXES, "keep"], default="keep",
                   help="output format (default: keep the input's); animations need png, webp, gif or tiff")
    p.add_argument("--quality", type=int, default=95, choices=range(1, 101), metavar="1-100",
                   help="JPEG/WebP quality (default 95)")
    add_device(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the network's random draws (default 0)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--skip-existing", action="store_true", help="leave existing outputs alone")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace earlier outputs: only files sr4 wrote (its Software mark), never an input "
                               "of the run, a folder or a file of another program")
    p.add_argument("--max-pixels", type=_max_pixels_arg, metavar="N",
                   help="largest input accepted, in pixels, all frames of an animation together "
                        "(default: Pillow's 89,478,485 bomb limit)")
    add_processor(p)


def validate_options(args: argparse.Namespace) -> str | None:
    """What is wrong with options argparse cannot check alone, or None (checked before any work)."""
    seps = {"/", "\\", os.sep, os.altsep or "/", "\0"}
    if any(sep in args.suffix for sep in seps):
        return f"--suffix {args.suffix!r}: path separators are not allowed (outputs stay inside -o)"
    if not -(2**63) <= args.seed < 2**64:
        return f"--seed {args.seed}: out of range (0 to 2**64 - 1)"
    return None


def build_processor(args: argparse.Namespace, device: str) -> ImageProcessor:
    """The Upscaler, or the refiner pipeline, the options ask for (`sr4.cli.options.build_processor`)."""
    from sr4.models.bicubic import BICUBIC, BICUBIC_NOTICE

    if args.pipeline == "upsampler" and args.model == BICUBIC:
        print(f"sr4: note: {BICUBIC_NOTICE}", file=sys.stderr)
    return options.build_processor(args, device)


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
