"""`sr4 info [MODEL]`: the architecture, hyperparameters, scale and size detected in an upsampler checkpoint.

Without MODEL it describes sr4's bundled default upsampler, with its checksum and training recipe. What it prints
comes from the model's descriptor (`sr4.models`), as loaded by every other command."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="upsampler checkpoint (.safetensors, .pth or .pt); "
                   "default: sr4's bundled default model")
    p.add_argument("--key", default=None, help="wrapper entry to read (default: params_ema, then params, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from sr4.checkpoints import read_state_dict
    from sr4.errors import CheckpointError
    from sr4.models import REGISTRY

    bundled = None
    if args.model is None:
        from sr4.models.bundled import DEFAULT_MODEL

        bundled = DEFAULT_MODEL.describe()
        args.model = bundled["file"]
    try:
        sd = read_state_dict(args.model, key=args.key)
        model = REGISTRY.load(sd, name=args.model)  # proves the checkpoint loads strictly
    except CheckpointError as exc:
        print(f"sr4 info: {exc}", file=sys.stderr)
        return 1
    params = sum(p.numel() for p in model.model.parameters())
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in sd.values() if v.is_floating_point()})
    hyperparameters = dict(model.hyperparameters)
    info = {"file": str(args.model), "arch": model.arch.id, "scale": model.scale, "parameters": params,
            "stored_dtypes": dtypes, "min_size": model.size_requirements.minimum, "hyperparameters": hyperparameters}
    if bundled is not None:
        info["bundled"] = bundled
    if args.json:
        print(json.dumps(info))
        return 0
    if bundled is not None:
        print(f"bundled model: {bundled['name']} (sr4's default)")
        print(f"sha256:        {bundled['sha256']}")
        print(f"recipe:        {bundled['recipe']}")
        if bundled["evaluation"]:
            print(f"evaluation:    {bundled['evaluation']}")
    print(f"file:          {info['file']}")
    print(f"architecture:  {model.arch.id}")
    print(f"scale:         x{model.scale}")
    print(f"parameters:    {params:,}")
    print(f"stored dtype:  {', '.join(dtypes)}")
    print(f"min input:     {model.size_requirements.minimum} px per side")
    print("hyperparameters (img_range cannot be read from a checkpoint; 1.0 assumed):")
    for key, value in hyperparameters.items():
        print(f"  {key}: {value}")
    return 0
