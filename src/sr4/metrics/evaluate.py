"""Score a folder of SR images against a folder of HR images with the challenge's metrics.

Pairing follows the challenge: an SR file's stem minus a trailing ``x4`` names the HR file
(``0901x4.png`` or ``0901.png`` -> ``0901.*``); ``sr_pattern`` (a regex with a ``key`` group,
matched on the SR stem) replaces that rule. Every image is converted to 8-bit RGB before scoring
(gray -> G,G,G, alpha dropped, 16-bit -> round(v * 255 / 65535)), as the challenge read PNGs.
Unreadable files, missing partners and size mismatches are recorded per image and skipped.
Folders are listed by `sr4.image.files.list_images`: hidden files and sr4's temporary files
(left by an interrupted run) are never scored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sr4.image.convert import to_batch, to_rgb8
from sr4.image.files import list_images
from sr4.image.resize import imresize
from sr4.metrics.learned import LEARNED, LearnedMetrics, build_learned
from sr4.metrics.niqe import NIQEConfig, niqe
from sr4.metrics.niqe import version_note as niqe_version
from sr4.metrics.psnr_ssim import FidelityConfig, psnr, ssim
from sr4.metrics.score import challenge_score, missing_for_score

ALL_METRICS = ("psnr", "ssim", "lpips", "dists", "niqe", "clipiqa", "maniqa", "musiq")
LOWER_BETTER = {"lpips", "dists", "niqe"}
FULL_REFERENCE_METRICS = ("psnr", "ssim", "lpips", "dists")
DEFAULT_SR_PATTERN = r"^(?P<key>.+?)(?:x4)?$"


@dataclass(frozen=True)
class EvalConfig:
    metrics: tuple[str, ...] = ALL_METRICS
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    niqe: NIQEConfig = field(default_factory=NIQEConfig)
    sr_pattern: str = DEFAULT_SR_PATTERN
    resize_mismatch: bool = False  # resize SR to the HR size (MATLAB bicubic) instead of refusing
    weights_dir: str | None = None
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}")
        try:
            rx = re.compile(self.sr_pattern)
        except re.error as exc:
            raise ValueError(f"bad --sr-pattern {self.sr_pattern!r}: {exc}") from None
        if "key" not in rx.groupindex:
            raise ValueError(f"--sr-pattern {self.sr_pattern!r} needs a named group (?P<key>...)")


@dataclass
class Pair:
    key: str
    sr: Path
    hr: Path


@dataclass
class ImageResult:
    key: str
    sr: Path
    hr: Path
    width: int
    height: int
    values: dict[str, float]
    notes: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    images: list[ImageResult]
    errors: list[tuple[str, str]]  # (file, problem)
    averages: dict[str, float | None]
    counts: dict[str, int]
    score: float | None
    score_missing: list[str]
    unavailable: dict[str, str]
    versions: dict[str, str]
    config: EvalConfig
    device: str


def pair_files(
    sr_dir: Path, hr_dir: Path, sr_pattern: str = DEFAULT_SR_PATTERN
) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Match SR files to HR files by key; returns the pairs and (file, problem) for the rest."""
    rx = re.compile(sr_pattern)
    hr_by_key: dict[str, Path] = {}
    problems: list[tuple[str, str]] = []
    for p in list_images(hr_dir):
        if p.stem in hr_by_key:
            problems.append((str(p), f"two HR files share the name {p.stem!r} (also {hr_by_key[p.stem].name})"))
            continue
        hr_by_key[p.stem] = p
    pairs, used = [], set()
    for p in list_images(sr_dir):
        m = rx.fullmatch(p.stem) or rx.match(p.stem)
        key = m.group("key") if m else None
        if key is None or key not in hr_by_key:
            # Also accept an SR file named exactly like its HR (e.g. 0901.png when a pattern expects x4).
            key = p.stem if p.stem in hr_by_key else key
        if key is None or key not in hr_by_key:
            problems.append((str(p), f"no HR image for key {key!r} in {hr_dir}"))
            continue
        if key in used:
            problems.append((str(p), f"a second SR image for HR {hr_by_key[key].name}; skipped"))
            continue
        used.add(key)
        pairs.append(Pair(key, p, hr_by_key[key]))
    for key, p in hr_by_key.items():
        if key not in used:
            problems.append((str(p), "no SR image for this HR image"))
    return pairs, problems


def read_rgb8(path: Path) -> np.ndarray:
    from sr4.image.io import read_image

    return to_rgb8(read_image(path).pixels)


def _nan_mean(vals: list[float]) -> tuple[float | None, int]:
    good = [v for v in vals if v is not None and not math.isnan(v) and not math.isinf(v)]
    return (float(np.mean(good)) if good else None), len(good)


def score_image(sr: np.ndarray, hr: np.ndarray | None, metrics: Iterable[str], learned: LearnedMetrics,
                cfg: EvalConfig, notes: list[str]) -> dict[str, float]:
    """The requested metrics of one HxWx3 uint8 SR image (against `hr`, same size, for the full-reference
    ones; without `hr` those are left out). A metric that fails gives NaN and a line in `notes`."""
    values: dict[str, float] = {}
    sr_t = hr_t = None
    for m in metrics:
        if hr is None and m in FULL_REFERENCE_METRICS:
            continue
        try:
            if m in ("psnr", "ssim"):
                assert hr is not None  # full-reference metrics were skipped above without HR
                values[m] = (psnr if m == "psnr" else ssim)(sr, hr, cfg.fidelity)
            elif m == "niqe":
                values[m] = niqe(sr, cfg.niqe)
            else:
                if sr_t is None:
                    sr_t, hr_t = to_batch(sr), (None if hr is None else to_batch(hr))
                values[m] = learned.functions[m](sr_t, hr_t)
        except (ValueError, RuntimeError) as exc:
            values[m] = math.nan
            notes.append(f"{m}: {exc}")
    return values


def evaluate_pairs(
    pairs: list[Pair],
    cfg: EvalConfig,
    errors: list[tuple[str, str]] | None = None,
    progress: Callable[[Pair], None] | None = None,
) -> EvalResult:
    from sr4.utils.device import resolve_device

    errors = list(errors or [])
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    learned = build_learned([m for m in cfg.metrics if m in LEARNED], cfg.weights_dir, device)
    versions = dict(learned.versions)
    if "psnr" in cfg.metrics or "ssim" in cfg.metrics:
        versions["psnr"] = versions["ssim"] = f"NTIRE 2025 eval ({cfg.fidelity.label()})"
    if "niqe" in cfg.metrics:
        versions["niqe"] = niqe_version() + (f", {cfg.niqe.color}" if cfg.niqe.color != "yiq" else "")
    active = [m for m in cfg.metrics if m not in learned.unavailable]

    results: list[ImageResult] = []
    for pair in pairs:
        if progress:
            progress(pair)
        try:
            sr = read_rgb8(pair.sr)
            hr = read_rgb8(pair.hr)
        except (ValueError, OSError) as exc:  # sr4's ImageError carries the file and the problem
            errors.append((str(getattr(exc, "path", pair.sr)), str(getattr(exc, "problem", exc))))
            continue
        notes = []
        if sr.shape != hr.shape:
            msg = (f"SR {pair.sr.name} is {sr.shape[1]}x{sr.shape[0]} but HR {pair.hr.name} is "
                   f"{hr.shape[1]}x{hr.shape[0]} (WxH)")
            if not cfg.resize_mismatch:
                errors.append((str(pair.sr), msg + "; use --resize-mismatch to resize SR to the HR size"))
                continue
            sr = imresize(sr, size=hr.shape[:2])
            notes.append(msg + "; SR resized to the HR size (MATLAB bicubic)")
        values = score_image(sr, hr, active, learned, cfg, notes)
        results.append(ImageResult(pair.key, pair.sr, pair.hr, sr.shape[1], sr.shape[0], values, notes))

    averages: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for m in cfg.metrics:
        averages[m], counts[m] = _nan_mean([r.values.get(m, math.nan) for r in results]) if m in active else (None, 0)
    score_avgs = dict(averages)
    # The score is only comparable when every metric covers every scored image.
    for m in ("lpips", "dists", "niqe", "clipiqa", "maniqa", "musiq"):
        if counts.get(m, 0) != len(results):
            score_avgs[m] = None
    return EvalResult(
        images=results, errors=errors, averages=averages, counts=counts,
        score=challenge_score(score_avgs) if results else None,
        score_missing=missing_for_score(score_avgs) if results else list(missing_for_score({})),
        unavailable=dict(learned.unavailable), versions=versions, config=cfg, device=str(device),
    )


def evaluate_dirs(sr_dir: str | Path, hr_dir: str | Path, cfg: EvalConfig | None = None,
                  progress: Callable[[Pair], None] | None = None) -> EvalResult:
    cfg = cfg or EvalConfig()
    pairs, problems = pair_files(Path(sr_dir), Path(hr_dir), cfg.sr_pattern)
    return evaluate_pairs(pairs, cfg, problems, progress)
