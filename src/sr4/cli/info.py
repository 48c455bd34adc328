"""`sr4 info [MODEL]`: the architecture, hyperparameters, scale and size detected in an upsampler checkpoint.

Without MODEL it describes sr4's bundled default upsampler, with its checksum and training recipe. What it prints
comes from the model's descriptor (`sr4.models`), as loaded by every other command."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="upsampler checkpoint (.safetensors, .pth or .pt; MambaIRv2, or with "
                   "sr4[spandrel] any architecture spandrel loads); default: sr4's bundled default model")
    p.add_argument("--key", default=None, help="wrapper entry to read (default: params_ema, then params, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _bundled_facts() -> dict[str, Any]:
    """The bundled model's fields from its safetensors header and the registry's detection, without importing
    torch (`sr4 info` stays quick). The sha256 check proves the file is the one sr4's tests load strictly, and
    tests/test_startup.py checks that these fields equal the full load's."""
    from sr4.errors import CheckpointError
    from sr4.models import REGISTRY, NetworkArchitecture
    from sr4.models.bundled import DEFAULT_MODEL, default_weights_path
    from sr4.utils.safetensors_header import read_safetensors_header

    path = default_weights_path(verify=True)
    header: Any = read_safetensors_header(path)  # names and shapes: all that detection reads
    arch = REGISTRY.detect(header, name=str(path))
    if not isinstance(arch, NetworkArchitecture):
        raise CheckpointError(f"{path}: the bundled file is not a network checkpoint")
    kwargs = arch.hyperparameters(header, str(path))
    floats = [t for t in header.values() if t.is_floating_point]  # the parameters; the one buffer is int64
    scale = arch.scale_of(kwargs)
    # what MambaIRv2's descriptor states (models/mambairv2.capabilities); test_startup checks it equals the full load
    return {"file": str(path), "arch": arch.id, "arch_name": arch.name, "scale": scale,
            "purpose": "SR" if scale > 1 else "Restoration", "parameters": sum(t.numel() for t in floats),
            "stored_dtypes": sorted({t.dtype for t in floats}), "runs_in": ["float32", "float16", "bfloat16"],
            "min_size": arch.min_size_of(kwargs), "multiple_of": 1, "square": False, "tiling": "supported",
            "hyperparameters": kwargs, "bundled": DEFAULT_MODEL.describe()}


def _checkpoint_facts(path: str, key: str | None) -> dict[str, Any]:
    """The fields of any checkpoint, from the descriptor of its full, strict load."""
    from sr4.checkpoints import read_state_dict
    from sr4.models import REGISTRY

    sd = read_state_dict(path, key=key)
    model = REGISTRY.load(sd, name=path)  # proves the checkpoint loads strictly
    stored = {str(v.dtype).removeprefix("torch.") for v in sd.values() if v.is_floating_point()}
    req = model.size_requirements
    return {"file": path, "arch": model.arch.id, "arch_name": model.arch.name, "scale": model.scale,
            "purpose": model.purpose, "parameters": sum(p.numel() for p in model.model.parameters()),
            "stored_dtypes": sorted(stored), "runs_in": [str(d).removeprefix("torch.") for d in model.supported_dtypes],
            "min_size": req.minimum, "multiple_of": req.multiple_of, "square": req.square,
            "tiling": model.tiling.value, "hyperparameters": dict(model.hyperparameters)}


def run(args: argparse.Namespace) -> int:
    from sr4.errors import CheckpointError

    try:
        if args.model is None and args.key is None:
            info = _bundled_facts()
        elif args.model is None:  # a wrapper key asked for: read the bundled file the full way
            from sr4.models.bundled import DEFAULT_MODEL

            info = _checkpoint_facts(str(DEFAULT_MODEL.path), args.key)
            info["bundled"] = DEFAULT_MODEL.describe()
        else:
            info = _checkpoint_facts(str(args.model), args.key)
    except CheckpointError as exc:
        print(f"sr4 info: {exc}", file=sys.stderr)
        return 1
    bundled, hyperparameters = info.get("bundled"), info["hyperparameters"]
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
    print(f"architecture:  {info['arch']}" + (f" ({info['arch_name']})" if info["arch_name"] != info["arch"] else ""))
    print(f"scale:         x{info['scale']} ({info['purpose']})")
    print(f"parameters:    {info['parameters']:,}")
    print(f"stored dtype:  {', '.join(info['stored_dtypes'])}")
    print(f"runs in:       {', '.join(info['runs_in'])}")
    shape = [f"multiple of {info['multiple_of']}"] if info["multiple_of"] > 1 else []
    shape += ["square"] if info["square"] else []
    print(f"min input:     {info['min_size']} px per side" + (f" ({', '.join(shape)}; sr4 pads)" if shape else ""))
    print(f"tiling:        {info['tiling']}")
    sr4_own = "loaded_by" not in hyperparameters  # a foreign loader states img_range itself
    print("hyperparameters" + (" (img_range cannot be read from a checkpoint; 1.0 assumed)" if sr4_own else "") + ":")
    for key, value in hyperparameters.items():
        print(f"  {key}: {value}")
    return 0
