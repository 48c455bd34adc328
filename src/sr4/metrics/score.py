"""The NTIRE 2025 x4 perceptual-track score, from per-metric averages over the test set.

    Score = (1 - LPIPS) + (1 - DISTS) + CLIPIQA + MANIQA + MUSIQ / 100 + max(0, (10 - NIQE) / 10)

Only defined when all six averages are known: a partial sum would not be comparable with the
challenge's table, so ``challenge_score`` returns None (and names what is missing) otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

SCORE_METRICS = ("lpips", "dists", "clipiqa", "maniqa", "musiq", "niqe")


def score_terms(avg: Mapping[str, float]) -> dict[str, float]:
    """Each metric's contribution to the score (only for the metrics present in ``avg``)."""
    rules: dict[str, Callable[[float], float]] = {
        "lpips": lambda v: 1.0 - v,
        "dists": lambda v: 1.0 - v,
        "clipiqa": lambda v: v,
        "maniqa": lambda v: v,
        "musiq": lambda v: v / 100.0,
        "niqe": lambda v: max(0.0, (10.0 - v) / 10.0),
    }
    return {k: rules[k](float(avg[k])) for k in SCORE_METRICS if _known(avg.get(k))}


def _known(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def missing_for_score(avg: Mapping[str, float | None]) -> list[str]:
    return [k for k in SCORE_METRICS if not _known(avg.get(k))]


def challenge_score(avg: Mapping[str, float | None]) -> float | None:
    """The challenge score from averages keyed by lower-case metric name; None if any is missing."""
    if missing_for_score(avg):
        return None
    known = {k: float(v) for k, v in avg.items() if v is not None}
    return float(sum(score_terms(known).values()))
