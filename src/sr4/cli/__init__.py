"""The `sr4` command. Each subcommand lives in its own module with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "upscale": ("sr4.cli.upscale", "upscale images x4 (upsampler alone, or the SNUCV / TSD-SR pipelines)"),
    "info": ("sr4.cli.info", "show the architecture detected in a checkpoint"),
    "eval": ("sr4.cli.eval", "score SR images with the NTIRE 2025 metrics"),
    "train": ("sr4.cli.train", "fine-tune the upsampler (alone or through the frozen refiner)"),
    "serve": ("sr4.cli.serve", "local web app to compare upscalers side by side (needs sr4[web])"),
}


def _threads_arg(text: str) -> int:
    from sr4.utils.threads import parse_threads

    try:
        return parse_threads(text, "--threads")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from sr4 import __version__

    parser = argparse.ArgumentParser(prog="sr4", description="x4 image super-resolution")
    parser.add_argument("--version", action="version", version=f"sr4 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        p.add_argument("--threads", type=_threads_arg, metavar="N",
                       help="CPU threads for torch (default: $SR4_THREADS, else $OMP_NUM_THREADS, else one per core)")
        try:
            import_module(module).add_parser(p)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p.set_defaults(_missing=True)  # command not built yet in this checkout
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"sr4 {args.command}: not available in this build", file=sys.stderr)
        return 2
    from sr4.utils.threads import apply_thread_policy

    try:  # before any command imports torch: OpenMP reads its settings once
        apply_thread_policy(args.threads)
    except ValueError as exc:
        print(f"sr4 {args.command}: {exc}", file=sys.stderr)
        return 2
    return int(import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
