"""The one reader of weight files: upsamplers, LoRA files, metric weights, training states.

Formats: ``.safetensors`` and PyTorch pickles (``.pth``/``.pt``/anything ``torch.save`` wrote), the latter
only through ``torch.load(weights_only=True)`` so that a file can never run code. The format is
recognised from the file's first bytes, not its extension.

Wrappers (`read_state_dict`): BasicSR stores ``{'params': sd}``, and with EMA training ``{'params': sd,
'params_ema': sd_ema}``. The MambaIRv2 releases and SNUCV's ``mamba_trained.pth`` contain only ``params``.
MambaIR's own test configs load ``params`` (BasicSR's default ``param_key``), but BasicSR validates and
publishes with the EMA network when one exists, so when both are present ``params_ema`` is taken (as
Real-ESRGAN's inference does); ``key="params"`` overrides. Other wrappers unwrapped: ``state_dict``, ``model``,
``net``. A ``module.`` prefix (DataParallel/DDP) on every key is stripped.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sr4.errors import CheckpointError

if TYPE_CHECKING:  # imported by the readers themselves: the registry imports this module and stays torch-free
    import torch

#: wrapper entries looked into, in this order, when a file holds a dict of dicts (BasicSR, Lightning, ...).
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net")

#: safetensors refuses headers above 100 MB; a larger "length" means the file is something else.
_MAX_SAFETENSORS_HEADER = 100_000_000
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def sniff(path: str | os.PathLike[str]) -> str:
    """The format from the first bytes: ``"safetensors"`` (an 8-byte little-endian header length, then the
    JSON header's '{'), ``"torch-zip"`` (a torch zip archive) or ``"torch-legacy"`` (a legacy torch pickle).

    safetensors is tested first: its length bytes may start with 0x80, the pickle marker."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len <= _MAX_SAFETENSORS_HEADER:
            if 8 + header_len > size:
                raise CheckpointError(f"{path}: truncated safetensors file (its header alone declares "
                                      f"{8 + header_len:,} bytes, the file has {size:,})")
            return "safetensors"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:  # pickle protocol 2..5
        return "torch-legacy"
    raise CheckpointError(f"{path}: not a safetensors file nor a PyTorch checkpoint (unrecognised header {head[:8]!r})")


def load_object(path: str | os.PathLike[str]) -> Any:
    """What the file holds, on the CPU: a dict of tensors for safetensors, whatever ``torch.save`` stored (tensors,
    numbers, strings, containers of them) for torch files. Pickled Python objects are refused, never run."""
    path = Path(path)
    if sniff(path) == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: it holds pickled Python objects{what} besides tensors, and sr4 never runs pickled "
            "code; if you trust its source, re-save its tensors once as .safetensors (torch.load in an isolated "
            "session, then safetensors.torch.save_file) and pass that file"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch checkpoint ({type(exc).__name__}: {detail})"
                              ) from None


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def read_state_dict(path: str | os.PathLike[str], key: str | None = None,
                    wrappers: tuple[str, ...] = WRAPPER_KEYS) -> dict[str, torch.Tensor]:
    """The bare state_dict of a weights file (tensors on CPU, wrappers and ``module.`` removed).

    ``key`` picks a wrapper entry explicitly (e.g. ``"params"``); by default the first of ``wrappers`` that
    holds a dict is used (wrappers may nest, e.g. ``{'state_dict': {'params': ...}}``).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    obj = load_object(path)
    key_used = key is None
    for _ in range(3):
        if _is_state_dict(obj) or not isinstance(obj, dict):
            break
        if not key_used and isinstance(obj.get(key), dict):
            obj, key_used = obj[key], True
            continue
        found = next((k for k in wrappers if isinstance(obj.get(k), dict)), None)
        if found is None:
            break
        obj = obj[found]
    if not key_used:
        raise CheckpointError(f"{path}: no state_dict under key {key!r}")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors
