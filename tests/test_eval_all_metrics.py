"""`sr4 eval` with all eight metrics available (small weights written in the real file formats):
the challenge score appears in the summary and equals the formula applied to the reported averages."""

import json
import lzma
import shutil
from pathlib import Path

import pytest
import test_metrics_maniqa
import test_metrics_musiq
import torch
from test_eval_cli import weights  # noqa: F401  (LPIPS / DISTS files in pyiqa's and torchvision's formats)

from sr4.cli import main

DATA = Path(__file__).parent / "data" / "metrics"


@pytest.mark.slow
def test_eval_reports_the_challenge_score_when_all_metrics_run(tmp_path, weights):  # noqa: F811
    root = tmp_path / "hub"
    shutil.copytree(weights, root)
    (root / "clip").mkdir()
    (root / "clip" / "RN50.pt").write_bytes(lzma.decompress((DATA / "clipiqa" / "RN50_small.pt.xz").read_bytes()))
    test_metrics_musiq.write_weights(root, "koniq")
    torch.save(test_metrics_maniqa._checkpoint("p16"), root / "pyiqa" / "ckpt_koniq10k.pt")

    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir()
    hr.mkdir()
    for name, key in (("coffee", "0901"), ("chelsea", "0902")):
        shutil.copy(DATA / f"sr_{name}.png", sr / f"{key}x4.png")
        shutil.copy(DATA / f"hr_{name}.png", hr / f"{key}.png")
    out = tmp_path / "report"
    assert main(["eval", str(sr), str(hr), "--out", str(out), "--weights-dir", str(root), "--quiet",
                 "--no-report"]) == 0

    summary = json.loads((out / "summary.json").read_text())
    avg = summary["averages"]
    assert set(avg) >= {"psnr", "ssim", "lpips", "dists", "niqe", "clipiqa", "maniqa", "musiq"}
    assert summary["score"] is not None
    expected = ((1 - avg["lpips"]) + (1 - avg["dists"]) + avg["clipiqa"] + avg["maniqa"] + avg["musiq"] / 100
                + max(0.0, (10 - avg["niqe"]) / 10))
    assert summary["score"] == pytest.approx(expected, rel=1e-9)
    assert 0.0 < avg["clipiqa"] < 1.0  # a softmax probability averaged over prompt pairs
