"""The challenge score against the published perceptual-track table (NTIRE 2025 x4 report, arXiv:2504.14582;
docs/method.md, "Challenge harness, metrics and score")."""

import pytest

from sr4.metrics.score import challenge_score, missing_for_score, score_terms

# LPIPS, DISTS, NIQE, MANIQA, MUSIQ, CLIP-IQA averages and the published score.
TABLE = {
    "SNUCV": (0.2113, 0.1082, 2.9635, 0.4939, 71.4919, 0.7543, 4.3472),
    "MicroSR": (0.2340, 0.1261, 3.7380, 0.3552, 64.2008, 0.6317, 3.8950),
    "SamsungAICamera": (0.1681, 0.0929, 4.4089, 0.3566, 62.1058, 0.4934, 3.7692),
}


@pytest.mark.parametrize("team", TABLE)
def test_published_scores(team):
    lp, di, ni, ma, mu, cl, published = TABLE[team]
    avg = {"lpips": lp, "dists": di, "niqe": ni, "maniqa": ma, "musiq": mu, "clipiqa": cl}
    # The table's averages are themselves rounded to 4 decimals (SNUCV's recomputes to 4.34727), so
    # agreement is to the 4th decimal, not bit-exact rounding.
    assert challenge_score(avg) == pytest.approx(published, abs=1e-4)


def test_niqe_term_is_clamped_and_terms_reported():
    avg = {"lpips": 0.5, "dists": 0.5, "niqe": 12.0, "maniqa": 0.1, "musiq": 50.0, "clipiqa": 0.2}
    terms = score_terms(avg)
    assert terms["niqe"] == 0.0 and terms["musiq"] == pytest.approx(0.5)
    assert challenge_score(avg) == pytest.approx(0.5 + 0.5 + 0.1 + 0.5 + 0.2)


def test_missing_metric_gives_no_score():
    avg = {"lpips": 0.2, "dists": 0.1, "niqe": 3.0, "maniqa": None, "musiq": float("nan")}
    assert challenge_score(avg) is None
    assert missing_for_score(avg) == ["clipiqa", "maniqa", "musiq"]
    assert set(score_terms(avg)) == {"lpips", "dists", "niqe"}
