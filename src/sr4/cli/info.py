"""`sr4 info [MODEL]`: the architecture, hyperparameters, scale and size detected in an upsampler checkpoint.

Without MODEL it describes sr4's bundled default upsampler, with its checksum and training recipe. What it prints
comes from the model's descriptor (`sr4.models`), as loaded by every other command."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="upsampler checkpoint (.safetensors, .pth or .pt; MambaIRv2, or with "
                   "sr4[spandrel] any architecture spandrel loads); default: sr4's bundled default model")
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
    req = model.size_requirements
    runs_in = [str(d).removeprefix("torch.") for d in model.supported_dtypes]
    info = {"file": str(args.model), "arch": model.arch.id, "arch_name": model.arch.name, "scale": model.scale,
            "purpose": model.purpose, "parameters": params, "stored_dtypes": dtypes, "runs_in": runs_in,
            "min_size": req.minimum, "multiple_of": req.multiple_of, "square": req.square,
            "tiling": model.tiling.value, "hyperparameters": hyperparameters}
    if bundled is not None:
        info["bundled"] = bundled
    if args.json:
        print(json.dumps(info, default=str))  # hyperparameters of foreign models may hold tuples, enums, ...
        return 0
    if bundled is not None:
        print(f"bundled model: {bundled['name']} (sr4's default)")
        print(f"sha256:        {bundled['sha256']}")
        print(f"recipe:        {bundled['recipe']}")
        if bundled["evaluation"]:
            print(f"evaluation:    {bundled['evaluation']}")
    print(f"file:          {info['file']}")
    print(f"architecture:  {model.arch.id}" + (f" ({model.arch.name})" if model.arch.name != model.arch.id else ""))
    print(f"scale:         x{model.scale} ({model.purpose})")
    print(f"parameters:    {params:,}")
    print(f"stored dtype:  {', '.join(dtypes)}")
    print(f"runs in:       {', '.join(runs_in)}")
    shape = [f"multiple of {req.multiple_of}"] if req.multiple_of > 1 else []
    shape += ["square"] if req.square else []
    print(f"min input:     {req.minimum} px per side" + (f" ({', '.join(shape)}; sr4 pads)" if shape else ""))
    print(f"tiling:        {model.tiling.value}")
    sr4_own = "loaded_by" not in hyperparameters  # a foreign loader states img_range itself
    note = " (img_range cannot be read from a checkpoint; 1.0 assumed)" if sr4_own else ""
    print(f"hyperparameters{note}:")
    for key, value in hyperparameters.items():
        print(f"  {key}: {value}")
    return 0
