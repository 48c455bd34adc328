"""The `sr4` command. Each subcommand lives in its own module with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import os
import signal
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


#: exit status when stdout is closed early (`sr4 info | head -1`): 128 + SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: the command's own (0, 1, 2), 2 for an `sr4.errors.Sr4Error` a command
    did not handle (printed as `sr4 CMD: message`, no traceback), 128 + N when signal N (SIGINT 130,
    SIGTERM 143) stopped it, 141 when the reader of stdout went away."""
    from sr4.errors import Sr4Error
    from sr4.utils.signals import Interrupted, exit_at_once_on_signals, stop_on_signals

    name = "sr4"
    try:
        with stop_on_signals():
            parser = build_parser()
            args = parser.parse_args(argv)
            if not getattr(args, "command", None):
                parser.print_help()
                return 2
            name = f"sr4 {args.command}"
            if getattr(args, "_missing", False):
                print(f"{name}: not available in this build", file=sys.stderr)
                return 2
            from sr4.utils.threads import apply_thread_policy

            try:  # before any command imports torch: OpenMP reads its settings once
                apply_thread_policy(args.threads)
            except ValueError as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                return 2
            code = int(import_module(args._module).run(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return code
    except Sr4Error as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as exc:
        stopped = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        print(f"{name}: stopped by {stopped.name}", file=sys.stderr)
        return stopped.exit_code()
    except BrokenPipeError:
        _detach_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        if argv is None:  # the process's own entry: a signal during the interpreter's shutdown ends it quietly
            exit_at_once_on_signals()


def _detach_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced (tests) or already closed
        pass


if __name__ == "__main__":
    sys.exit(main())
