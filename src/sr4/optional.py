"""sr4's optional dependencies (the extras of pyproject.toml) and the one-line hint when one is missing.

The base install runs the upsampler (MambaIRv2 with the numba CPU scan, bicubic, the bundled model), image I/O,
the metrics and `sr4 info`. Each extra adds a part: `refiner` the SD3 / TSD-SR stage M and the two-stage pipelines,
`train` training through the refiner (CLIP, TensorBoard), `web` the `sr4 serve` app, `spandrel` every architecture
spandrel loads (`sr4.models.spandrel`). Code that needs an extra
calls `require(extra, what)` first, so a user gets `pip install 'sr4[refiner]'` instead of an ImportError from deep
inside a library. Checking imports nothing (`importlib.util.find_spec`).
"""

from __future__ import annotations

import importlib.util

from sr4.errors import MissingDependencyError

#: extra -> the packages it installs that sr4 imports.
EXTRAS: dict[str, tuple[str, ...]] = {
    "refiner": ("diffusers", "peft"),
    "train": ("diffusers", "peft", "transformers"),
    "web": ("starlette", "uvicorn"),
    # checkpoints of other architectures (ESRGAN, Compact, SwinIR, HAT, DAT, ...) through spandrel's loaders
    "spandrel": ("spandrel",),
}


def missing(extra: str) -> list[str]:
    """The packages of `extra` that are not installed."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def install_hint(extra: str) -> str:
    return f"pip install 'sr4[{extra}]'"


def problem(extra: str, what: str) -> str | None:
    """One line saying that `what` needs `extra` and how to install it, or None when everything is there."""
    absent = missing(extra)
    if not absent:
        return None
    return f"{what} needs the {extra} extra ({', '.join(absent)} not installed): {install_hint(extra)}"


def require(extra: str, what: str) -> None:
    """Raise MissingDependencyError (one line, with the install command) unless `extra` is installed."""
    message = problem(extra, what)
    if message is not None:
        raise MissingDependencyError(message)
