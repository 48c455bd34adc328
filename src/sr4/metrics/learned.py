"""The learned metrics of the challenge, built only from local weight files.

LPIPS and DISTS are sr4's own modules (``sr4.metrics.lpips`` / ``sr4.metrics.dists``).
CLIP-IQA, MANIQA and MUSIQ run through pyiqa (optional, PolyForm-Noncommercial, needs
torchvision) when it is importable and their files are present; pyiqa is pointed at the same
weights root and Hugging Face is put offline first, so nothing is downloaded. A metric that
cannot be built is reported unavailable with the reason (usually the missing file's path); the
other metrics still run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sr4.metrics.weights import (
    MANIQA_TIMM_REPO,
    METRIC_FILES,
    WeightsError,
    hf_cache_dir,
    resolve_root,
    timm_backbone_present,
)

FULL_REFERENCE = ("lpips", "dists")
PYIQA_NO_REFERENCE = ("clipiqa", "maniqa", "musiq")
LEARNED = FULL_REFERENCE + PYIQA_NO_REFERENCE


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
    rows = []
    for metric, files in METRIC_FILES.items():
        for wf in files:
            rows.append(FileStatus(metric, wf.name, wf.purpose, tuple(wf.candidates(root)), wf.find(root), wf.note))
    timm_dir = hf_cache_dir() / ("models--" + MANIQA_TIMM_REPO.replace("/", "--"))
    rows.append(FileStatus("maniqa", MANIQA_TIMM_REPO, "timm ViT-B/8 backbone that MANIQA builds before loading",
                           (timm_dir,), timm_dir if timm_backbone_present() else None,
                           "Hugging Face cache (HF_HOME / HF_HUB_CACHE)"))
    return rows


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


def _native(name: str, root: Path, device: torch.device) -> tuple[MetricFn, str]:
    if name == "lpips":
        from sr4.metrics.lpips import LPIPS, VERSION

        model = LPIPS.from_pretrained(root).to(device)
    else:
        from sr4.metrics.dists import DISTS, VERSION

        model = DISTS.from_pretrained(root).to(device)

    @torch.no_grad()
    def fn(sr: torch.Tensor, hr: torch.Tensor | None) -> float:
        return float(model(sr.to(device), hr.to(device))[0])

    return fn, VERSION


def _pyiqa(name: str, root: Path, device: torch.device) -> tuple[MetricFn, str]:
    missing = [f"{wf.candidates(root)[0]}" for wf in METRIC_FILES[name] if wf.find(root) is None]
    if name == "maniqa" and not timm_backbone_present():
        missing.append(f"{hf_cache_dir()}/models--{MANIQA_TIMM_REPO.replace('/', '--')}")
    if missing:
        raise WeightsError("missing " + ", ".join(missing))
    import importlib.util

    if importlib.util.find_spec("pyiqa") is None:
        raise WeightsError("pyiqa is not installed (optional extra sr4[iqa], noncommercial, needs torchvision)")
    # pyiqa caches under torch.hub's dir (read when pyiqa is imported) and timm asks Hugging Face:
    # point both at the local files before the import. This changes process-wide settings, which
    # is why it only happens when pyiqa will really be used.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.hub.set_dir(str(root))
    try:
        import pyiqa
    except ImportError as exc:
        raise WeightsError(f"pyiqa could not be imported: {exc}") from None
    try:
        model = pyiqa.create_metric(name, device=device)
    except Exception as exc:  # pyiqa raises many kinds; report rather than stop the evaluation
        raise WeightsError(f"pyiqa could not build {name}: {type(exc).__name__}: {exc}") from None

    @torch.no_grad()
    def fn(sr: torch.Tensor, hr: torch.Tensor | None) -> float:
        return float(model(sr.to(device)).flatten()[0])

    return fn, f"pyiqa {getattr(pyiqa, '__version__', '?')} {name}"


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
            fn, version = (_native if name in FULL_REFERENCE else _pyiqa)(name, root, device)
        except WeightsError as exc:
            out.unavailable[name] = str(exc)
            continue
        out.functions[name] = fn
        out.versions[name] = version
    return out
