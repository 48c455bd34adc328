"""`sr4 eval SR_DIR HR_DIR`: the NTIRE 2025 x4 metrics and score, offline, with a report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sr4.cli.options import add_alpha, add_device, add_dtype, add_model, add_output, add_refiner, add_tiles

METRIC_NAMES = ("psnr", "ssim", "lpips", "dists", "niqe", "clipiqa", "maniqa", "musiq")


EPILOG = """outputs (in --out): metrics.csv (one row per image), summary.json (averages, score, settings,
metric versions, skipped files), report.html with box plots and bicubic/SR/HR crops of the best and
worst image (PNG files in its crops/ folder). The score is printed only when all six perceptual metrics
ran. --out is checked before any work: it must be writable, and files there that sr4 eval did not
write are never replaced.
exit status: 0 all pairs scored, 1 some files skipped (listed), 2 usage error or nothing to score,
128 + N when signal N stopped it (130 SIGINT, 143 SIGTERM)."""


def add_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("sr_dir", nargs="?", type=Path, help="folder of SR images (e.g. 0901x4.png or 0901.png)")
    p.add_argument("hr_dir", nargs="?", type=Path, help="folder of HR images (e.g. 0901.png)")
    add_output(p, required=False, dest="out", type=Path, help="output folder for metrics.csv, summary.json, "
               "report.html (default: SR_DIR with '_eval' appended, next to it)")
    p.add_argument("--metrics", default=",".join(METRIC_NAMES),
                   help=f"comma-separated subset of {','.join(METRIC_NAMES)} (default: all)")
    p.add_argument("--weights-dir", help="root holding pyiqa/, checkpoints/ and clip/ weight folders "
                                         "(default: $TORCH_HOME/hub, TORCH_HOME defaults to ~/.cache/torch)")
    p.add_argument("--list-weights", action="store_true",
                   help="print every weight file each learned metric needs, where it is looked for, and exit")
    add_device(p, help="auto, cpu, cuda, cuda:N or mps (default: auto); --lr-dir upscales there too")
    p.add_argument("--channel", choices=("y", "rgb"), default="y",
                   help="PSNR/SSIM on the Y channel (challenge, default) or on RGB (not the challenge's)")
    p.add_argument("--crop-border", type=int, default=4, help="PSNR/SSIM: pixels shaved per border (challenge: 4)")
    p.add_argument("--modcrop", type=int, default=4, help="PSNR/SSIM: crop sizes to a multiple of this (challenge: 4)")
    p.add_argument("--niqe-color", choices=("yiq", "ycbcr"), default="yiq",
                   help="NIQE gray channel: YIQ Y as pyiqa/the challenge (default) or YCbCr Y as basicsr")
    p.add_argument("--sr-pattern", default=None,
                   help="regex on the SR file stem with a (?P<key>...) group naming the HR stem "
                        "(default: strip a trailing 'x4')")
    p.add_argument("--resize-mismatch", action="store_true",
                   help="resize an SR image whose size differs from its HR to the HR size (MATLAB bicubic) "
                        "instead of skipping it")
    p.add_argument("--seed", type=int, default=0, help="torch seed set before scoring (recorded in the summary); "
                   "--lr-dir: also the seed of the network's random draws")
    p.add_argument("--no-report", action="store_true", help="write only metrics.csv and summary.json")
    up = p.add_argument_group("upscale, then score (options as sr4 upscale)")
    up.add_argument("--lr-dir", type=Path, help="upscale the LR images here into SR_DIR first (same file names), "
                                                "then score SR_DIR against HR_DIR")
    up.add_argument("--overwrite", action="store_true",
                    help="--lr-dir: replace images sr4 wrote earlier in SR_DIR (never other files)")
    add_model(up)
    add_tiles(up)
    add_dtype(up)
    add_alpha(up)
    add_refiner(p.add_argument_group("--lr-dir with --pipeline snucv|tsdsr (as sr4 upscale)"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from sr4.metrics.learned import format_weight_status, weight_status

    if args.list_weights:
        print(format_weight_status(weight_status(args.weights_dir)))
        return 0
    if args.sr_dir is None or args.hr_dir is None:
        print("sr4 eval: give SR_DIR and HR_DIR (or --list-weights)", file=sys.stderr)
        return 2

    from sr4.metrics.evaluate import DEFAULT_SR_PATTERN, EvalConfig, pair_files
    from sr4.metrics.niqe import NIQEConfig
    from sr4.metrics.psnr_ssim import FidelityConfig

    try:
        cfg = EvalConfig(
            metrics=tuple(m.strip().lower() for m in args.metrics.split(",") if m.strip()),
            fidelity=FidelityConfig(modcrop=args.modcrop, crop_border=args.crop_border, channel=args.channel),
            niqe=NIQEConfig(color=args.niqe_color),
            sr_pattern=args.sr_pattern or DEFAULT_SR_PATTERN,
            resize_mismatch=args.resize_mismatch,
            weights_dir=args.weights_dir,
            device=args.device,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"sr4 eval: {exc}", file=sys.stderr)
        return 2

    # SR_DIR may not exist yet when --lr-dir fills it.
    for d in (args.hr_dir,) if args.lr_dir is not None else (args.sr_dir, args.hr_dir):
        if not d.is_dir():
            print(f"sr4 eval: {d}: not a directory", file=sys.stderr)
            return 2
    out = args.out or args.sr_dir.parent / (args.sr_dir.name + "_eval")
    problem = _check_out(out)
    if problem:
        print(f"sr4 eval: {problem}", file=sys.stderr)
        return 2
    upscaled: dict[str, Any] = {}
    if args.lr_dir is not None:
        code = _upscale_lr(args, upscaled)
        if code:
            return code
    for d in (args.sr_dir, args.hr_dir):
        if not d.is_dir():
            print(f"sr4 eval: {d}: not a directory", file=sys.stderr)
            return 2
    pairs, problems = pair_files(args.sr_dir, args.hr_dir, cfg.sr_pattern)
    problems = list(upscaled.get("errors", [])) + problems
    if not pairs:
        print(f"sr4 eval: no SR/HR pairs found between {args.sr_dir} and {args.hr_dir}", file=sys.stderr)
        for f, msg in problems:
            print(f"  {f}: {msg}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from sr4.metrics.evaluate import evaluate_pairs
    from sr4.metrics.report import write_csv, write_report

    bar = tqdm(total=len(pairs), desc="sr4 eval", unit="img", disable=args.quiet, file=sys.stderr)
    try:
        result = evaluate_pairs(pairs, cfg, problems, progress=lambda pair: bar.update(1))
    except RuntimeError as exc:  # e.g. a CUDA device that is not there
        bar.close()
        print(f"sr4 eval: {exc}", file=sys.stderr)
        return 2
    bar.close()

    if args.no_report:
        import json

        from sr4.metrics.report import summary
        from sr4.utils.atomic import atomic_write_text

        write_csv(result, out / "metrics.csv")
        info = summary(result, args.sr_dir, args.hr_dir, {"csv": "metrics.csv", "summary": "summary.json"})
        if upscaled:
            info["upscaled"] = {k: v for k, v in upscaled.items() if k != "errors"}
        atomic_write_text(out / "summary.json", json.dumps(info, indent=2))
    else:
        write_report(result, out, args.sr_dir, args.hr_dir, lr_dir=args.lr_dir,
                     upscaled={k: v for k, v in upscaled.items() if k != "errors"} or None)

    for m in cfg.metrics:
        if m in result.unavailable:
            print(f"{m:8s} unavailable: {result.unavailable[m]}")
        else:
            avg = result.averages.get(m)
            print(f"{m:8s} {avg:.4f}  ({result.counts[m]} images)" if avg is not None else f"{m:8s} -")
    print("score    " + (f"{result.score:.4f}" if result.score is not None
                         else f"not computed (needs {', '.join(result.score_missing)})"))
    for f, msg in result.errors:
        print(f"skipped  {f}: {msg}", file=sys.stderr)
    print(f"results in {out}")
    return 1 if result.errors else 0


def _check_out(out: Path) -> str | None:
    """Why the report cannot go to `out` (not writable, or holding files sr4 eval did not write), or None."""
    from sr4.metrics.report import CROPS_DIR, foreign_report_files
    from sr4.utils.atomic import probe_writable, sweep_stale_temps

    problem = probe_writable(out)
    if problem:
        return f"--out {problem}"
    for folder in (out, out / CROPS_DIR):  # what a killed earlier run may have left
        sweep_stale_temps(folder)
    foreign = foreign_report_files(out)
    if foreign:
        return (f"--out {out}: {', '.join(p.name for p in foreign)} already there and not written by sr4 eval; "
                "choose another --out (nothing is replaced that sr4 did not write)")
    return None


def _upscale_lr(args: argparse.Namespace, record: dict) -> int:
    """Upscale every LR image into SR_DIR (`sr4.pipeline.batch` rules); fills `record`; returns an exit code."""
    from sr4.pipeline import batch
    from sr4.utils.atomic import probe_writable, sweep_stale_temps
    from sr4.utils.signals import stop_on_signals

    if not args.lr_dir.is_dir():
        print(f"sr4 eval: {args.lr_dir}: not a directory", file=sys.stderr)
        return 2
    report = batch.Report()
    found = batch.collect_inputs([str(args.lr_dir)], recursive=False, report=report)
    if not found:
        print(f"sr4 eval: no images in {args.lr_dir}", file=sys.stderr)
        return 2
    jobs = batch.plan_jobs(found, args.sr_dir, suffix="", ext="keep", report=report)
    if report.failed:  # e.g. SR_DIR is LR_DIR: the outputs would replace the inputs
        for src, message in report.failed:
            print(f"sr4 eval: {src}: {message}", file=sys.stderr)
        return 2
    existing = [job.dst for job in jobs if os.path.lexists(job.dst)]
    if existing and not args.overwrite:
        print(f"sr4 eval: {args.sr_dir} already holds {len(existing)} of the outputs (e.g. {existing[0].name}); "
              "pass --overwrite to replace them", file=sys.stderr)
        return 2
    problem = probe_writable(args.sr_dir)
    if problem:
        print(f"sr4 eval: {problem}", file=sys.stderr)
        return 2
    sweep_stale_temps(args.sr_dir)
    from sr4.cli.upscale import build_processor

    # The same processor `sr4 upscale` builds from the same options.
    try:
        upscaler = build_processor(args, args.device)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"sr4 eval: cannot load the upsampler: {exc}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    batch_options = batch.BatchOptions(overwrite=args.overwrite)
    todo = batch.select_todo(jobs, batch_options, report)
    bar = tqdm(total=len(todo), desc="upscale", unit="img", disable=args.quiet, file=sys.stderr)
    try:
        with stop_on_signals():
            stop = batch.process_jobs(upscaler, todo, batch_options, report, advance=bar.update,
                                      say=lambda text: tqdm.write(f"sr4 eval: {text}", file=sys.stderr))
    finally:
        bar.close()
    if stop is not None:
        print(f"sr4 eval: stopped by {stop.name} while upscaling: {len(report.done)} written, "
              f"{len(report.unfinished)} not finished; nothing scored", file=sys.stderr)
        return stop.exit_code()
    model = args.model_dir if args.pipeline != "upsampler" else (args.model or "sr4 bundled default")
    if args.pipeline == "snucv" and args.model:
        record["stage_u"] = args.model  # another stage U than the folder's mamba_trained.pth
    record.update({"lr_dir": str(args.lr_dir), "pipeline": args.pipeline, "model": model,
                   "images_written": [dst.name for dst in report.done],
                   "errors": [(str(src), message) for src, message in report.failed]})
    return 0
