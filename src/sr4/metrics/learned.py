"""The learned metrics of the challenge, built only from local weight files.

All five are sr4's own modules with pyiqa v0.1.13 semantics, reading pyiqa's (and torchvision's /
OpenAI CLIP's) weight files unchanged: LPIPS and DISTS (full reference), CLIP-IQA, MANIQA and MUSIQ
(no reference). pyiqa itself is not needed. A metric that cannot be built is reported unavailable
with the reason (usually the missing file's path); the other metrics still run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

import torch

from sr4.metrics.weights import METRIC_FILES, WeightsError, resolve_root

# metric -> (module, class); each class has from_pretrained(root, device=...) and a VERSION in its module.
_MODULES = {
    "lpips": ("sr4.metrics.lpips", "LPIPS"),
    "dists": ("sr4.metrics.dists", "DISTS"),
    "clipiqa": ("sr4.metrics.clipiqa", "CLIPIQA"),
    "maniqa": ("sr4.metrics.maniqa", "MANIQA"),
    "musiq": ("sr4.metrics.musiq", "MUSIQ"),
}
FULL_REFERENCE = ("lpips", "dists")
NO_REFERENCE = ("clipiqa", "maniqa", "musiq")
LEARNED = FULL_REFERENCE + NO_REFERENCE


@dataclass(frozen=True)
class FileStatus:
    metric: str
    name: str
    purpose: str
    looked_in: tuple[Path, ...]
    found: Path | None
    note: str


def weight_status(weights_dir: str | os.PathLike | None = None) -> list[FileStatus]:
    """Every file each learned metric needs, where it is looked for and whether it is there."""
    root = resolve_root(weights_dir)
    return [FileStatus(metric, wf.name, wf.purpose, tuple(wf.candidates(root)), wf.find(root), wf.note)
            for metric, files in METRIC_FILES.items() for wf in files]


def format_weight_status(rows: list[FileStatus]) -> str:
    lines = []
    for r in rows:
        state = f"present: {r.found}" if r.found else "MISSING"
        lines.append(f"{r.metric:8s} {r.name}\n         {r.purpose}\n         looked for: {r.looked_in[0]}"
                     + (f" (or {r.looked_in[1]})" if len(r.looked_in) > 1 else "")
                     + f"\n         {state}" + (f"  [{r.note}]" if r.note else ""))
    return "\n".join(lines)


# A metric function takes SR (and HR for full-reference ones) as (1, 3, H, W) float in [0, 1].
MetricFn = Callable[[torch.Tensor, "torch.Tensor | None"], float]


@dataclass
class LearnedMetrics:
    """The learned metrics that could be built, and why the others could not."""

    functions: dict[str, MetricFn] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def _build(name: str, root: Path, device: torch.device) -> tuple[MetricFn, str]:
    module_name, class_name = _MODULES[name]
    module = import_module(module_name)
    model = getattr(module, class_name).from_pretrained(root).to(device)
    full_reference = name in FULL_REFERENCE

    @torch.no_grad()
    def fn(sr: torch.Tensor, hr: torch.Tensor | None) -> float:
        if not full_reference:
            out = model(sr.to(device))
        elif hr is None:
            raise ValueError(f"{name} needs the HR image")
        else:
            out = model(sr.to(device), hr.to(device))
        return float(out.flatten()[0])

    return fn, module.VERSION


def build_learned(
    names: list[str], weights_dir: str | os.PathLike | None, device: torch.device
) -> LearnedMetrics:
    """Build the requested learned metrics; failures become ``unavailable`` entries, not errors."""
    root = resolve_root(weights_dir)
    out = LearnedMetrics()
    for name in names:
        if name not in LEARNED:
            raise ValueError(f"unknown learned metric {name!r}; choose from {', '.join(LEARNED)}")
        try:
            fn, version = _build(name, root, device)
        except WeightsError as exc:
            out.unavailable[name] = str(exc)
            continue
        out.functions[name] = fn
        out.versions[name] = version
    return out
