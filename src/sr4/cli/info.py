"""`sr4 info MODEL`: the architecture, hyperparameters, scale and size detected in an upsampler checkpoint."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="upsampler checkpoint (.safetensors, .pth or .pt)")
    p.add_argument("--key", default=None, help="wrapper entry to read (default: params_ema, then params, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from sr4.networks.loading import CheckpointError, build_and_load, detect_upsampler, read_state_dict

    try:
        sd = read_state_dict(args.model, key=args.key)
        config = detect_upsampler(sd, name=args.model)
        model = build_and_load(config, sd, name=args.model)  # proves the checkpoint loads strictly
    except CheckpointError as exc:
        print(f"sr4 info: {exc}", file=sys.stderr)
        return 1
    params = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in sd.values() if v.is_floating_point()})
    info = {"file": str(args.model), "arch": config.arch, "scale": config.scale, "parameters": params,
            "stored_dtypes": dtypes, "min_size": model.min_size, "hyperparameters": config.kwargs}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"file:          {info['file']}")
    print(f"architecture:  {config.arch}")
    print(f"scale:         x{config.scale}")
    print(f"parameters:    {params:,}")
    print(f"stored dtype:  {', '.join(dtypes)}")
    print(f"min input:     {model.min_size} px per side")
    print("hyperparameters (img_range cannot be read from a checkpoint; 1.0 assumed):")
    for key, value in config.kwargs.items():
        print(f"  {key}: {value}")
    return 0
