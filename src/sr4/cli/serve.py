"""`sr4 serve`: a local web app to compare upscalers on your own images (needs `pip install 'sr4[web]'`).

Candidates: bicubic, sr4's bundled default, every `--model FILE`, and the SNUCV / TSD-SR pipelines
of a `--model-dir`. Models and folders come only from this command line; the page picks among them.
"""

from __future__ import annotations

import argparse
import sys

from sr4.cli.options import add_device, add_dtype, add_tiles, positive_int

DEFAULT_PORT = 8765


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", default=[], metavar="FILE",
                   help="an upsampler checkpoint to offer (MambaIRv2 / -Light, .pth or .safetensors); repeatable")
    p.add_argument("--model-dir", metavar="DIR", help="SNUCV / TSD-SR model folder: offers both pipelines")
    add_device(p, help="auto | cpu | cuda:N (default auto); jobs run one at a time")
    add_dtype(p)
    add_tiles(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only); another address lets "
                        "others on the network use the app: there is no login")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--max-upload-mb", type=positive_int, default=50, metavar="MB",
                   help="largest upload accepted (default 50 MiB)")
    p.add_argument("--max-pixels", type=positive_int, default=2048 * 2048, metavar="N",
                   help="largest input image in pixels (default 4,194,304 = 2048x2048; an HR reference may "
                        "have 16 times as many)")
    p.add_argument("--weights-dir", help="root of the metric weight folders (as sr4 eval; default $TORCH_HOME/hub)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")


def run(args: argparse.Namespace) -> int:
    from sr4.optional import problem

    needs = problem("web", "sr4 serve")
    if needs is not None:
        print(f"sr4 serve: {needs}", file=sys.stderr)
        return 2
    from sr4.cli.options import processor_options
    from sr4.utils.device import resolve_device
    from sr4.web.app import LOCAL_NAMES, run_server
    from sr4.web.candidates import list_candidates
    from sr4.web.jobs import WebConfig

    try:
        resolve_device(args.device)
        candidates = list_candidates(args.model, args.model_dir)
    except (OSError, ValueError) as exc:
        print(f"sr4 serve: cannot start: {exc}", file=sys.stderr)
        return 2
    for cand in candidates:
        if cand.unavailable:
            print(f"sr4 serve: note: {cand.label} is unavailable: {cand.unavailable}", file=sys.stderr)
    if args.host not in LOCAL_NAMES + ("::1",):
        print(f"sr4 serve: WARNING: listening on {args.host}: anyone who can reach this address can upload "
              "images and run models on this machine (there is no login). Use the default 127.0.0.1 unless "
              "you mean it.", file=sys.stderr)
    config = WebConfig(
        candidates=tuple(candidates),
        processor=processor_options(args),
        max_upload_bytes=args.max_upload_mb * 1024 * 1024, max_pixels=args.max_pixels, weights_dir=args.weights_dir)
    try:
        return run_server(config, args.host, args.port, open_browser=args.open)
    except OSError as exc:  # port in use, address not on this machine
        print(f"sr4 serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
