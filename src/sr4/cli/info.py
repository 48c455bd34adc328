"""`sr4 info [MODEL]`: the architecture, hyperparameters, scale and size detected in an upsampler checkpoint.

Without MODEL it describes sr4's bundled default upsampler, with its checksum and training recipe."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="upsampler checkpoint (.safetensors, .pth or .pt); "
                   "default: sr4's bundled default model")
    p.add_argument("--key", default=None, help="wrapper entry to read (default: params_ema, then params, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _bundled_facts() -> tuple[dict, object]:
    """The bundled model's fields from its safetensors header, without importing torch (`sr4 info` stays quick).

    The sha256 check proves the file is the one sr4's tests build and load strictly."""
    from sr4.networks.default import DEFAULT_MODEL, default_weights_path
    from sr4.networks.loading import detect_upsampler
    from sr4.utils.safetensors_header import read_safetensors_header

    path = default_weights_path(verify=True)
    header = read_safetensors_header(path)
    config = detect_upsampler(header, name=str(path))
    floats = [t for t in header.values() if t.is_floating_point]  # the parameters; the one buffer is int64
    info = {"file": str(path), "arch": config.arch, "scale": config.scale, "parameters": sum(t.numel() for t in floats),
            "stored_dtypes": sorted({t.dtype for t in floats}), "min_size": config.min_size,
            "hyperparameters": config.kwargs, "bundled": DEFAULT_MODEL.describe()}
    return info, config


def _checkpoint_facts(model_path: str, key: str | None) -> tuple[dict, object]:
    from sr4.networks.loading import build_and_load, detect_upsampler, read_state_dict

    sd = read_state_dict(model_path, key=key)
    config = detect_upsampler(sd, name=model_path)
    model = build_and_load(config, sd, name=model_path)  # proves the checkpoint loads strictly
    params = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in sd.values() if v.is_floating_point()})
    info = {"file": model_path, "arch": config.arch, "scale": config.scale, "parameters": params,
            "stored_dtypes": dtypes, "min_size": model.min_size, "hyperparameters": config.kwargs}
    return info, config


def run(args: argparse.Namespace) -> int:
    from sr4.networks.loading import CheckpointError

    try:
        if args.model is None and args.key is None:
            info, config = _bundled_facts()
        elif args.model is None:  # a wrapper key asked for: read the bundled file the full way
            from sr4.networks.default import DEFAULT_MODEL

            info, config = _checkpoint_facts(str(DEFAULT_MODEL.path), args.key)
            info["bundled"] = DEFAULT_MODEL.describe()
        else:
            info, config = _checkpoint_facts(str(args.model), args.key)
    except CheckpointError as exc:
        print(f"sr4 info: {exc}", file=sys.stderr)
        return 1
    bundled = info.get("bundled")
    params, dtypes = info["parameters"], info["stored_dtypes"]
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
    print(f"architecture:  {config.arch}")
    print(f"scale:         x{config.scale}")
    print(f"parameters:    {params:,}")
    print(f"stored dtype:  {', '.join(dtypes)}")
    print(f"min input:     {info['min_size']} px per side")
    print("hyperparameters (img_range cannot be read from a checkpoint; 1.0 assumed):")
    for key, value in config.kwargs.items():
        print(f"  {key}: {value}")
    return 0
