"""`sr4 eval` end to end on the metric fixtures, with random LPIPS/DISTS weights in the real formats."""

import csv
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_metrics_learned import torchvision_alexnet, torchvision_vgg16

from sr4.cli import main
from sr4.metrics.evaluate import pair_files
from sr4.metrics.niqe import niqe
from sr4.metrics.psnr_ssim import psnr, ssim
from sr4.metrics.weights import ALEXNET, DISTS_W, LPIPS_ALEX, VGG16

DATA = Path(__file__).parent / "data" / "metrics"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    gen = torch.Generator().manual_seed(1)
    (root / "pyiqa").mkdir()
    (root / "checkpoints").mkdir()
    torch.save(torchvision_alexnet(gen), root / "checkpoints" / ALEXNET.name)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) * 0.1
                for k, c in enumerate([64, 192, 384, 256, 256])}, root / "pyiqa" / LPIPS_ALEX.name)
    torch.save(torchvision_vgg16(gen), root / "checkpoints" / VGG16.name)
    torch.save({"alpha": torch.full((1, 1475, 1, 1), 0.1), "beta": torch.full((1, 1475, 1, 1), 0.1)},
               root / "pyiqa" / DISTS_W.name)
    return root


@pytest.fixture()
def folders(tmp_path):
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir()
    hr.mkdir()
    shutil.copy(DATA / "sr_coffee.png", sr / "0901x4.png")
    shutil.copy(DATA / "hr_coffee.png", hr / "0901.png")
    shutil.copy(DATA / "sr_chelsea.png", sr / "0902.png")  # the challenge also accepts names without x4
    shutil.copy(DATA / "hr_chelsea.png", hr / "0902.png")
    (sr / "0903x4.png").write_bytes(b"not an image")
    shutil.copy(DATA / "hr_chelsea.png", hr / "0903.png")
    shutil.copy(DATA / "sr_coffee.png", sr / "0904x4.png")
    shutil.copy(DATA / "hr_chelsea.png", hr / "0904.png")  # different size from its SR
    shutil.copy(DATA / "hr_coffee.png", hr / "0905.png")  # no SR
    return sr, hr


def rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.svgs, self.text = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        if tag == "svg":
            self.svgs += 1

    def handle_data(self, data):
        self.text.append(data)


def test_eval_end_to_end(folders, weights, tmp_path, capsys):
    sr, hr = folders
    out = tmp_path / "report"
    rc = main(["eval", str(sr), str(hr), "--out", str(out), "--weights-dir", str(weights), "--quiet"])
    assert rc == 1  # some files were skipped, and that is reported through the exit code
    printed = capsys.readouterr()
    assert "0903x4.png" in printed.err and "clipiqa  unavailable" in printed.out

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["image"] for r in rows] == ["0901", "0902"]
    for r, name in zip(rows, ["coffee", "chelsea"]):
        s, h = rgb(DATA / f"sr_{name}.png"), rgb(DATA / f"hr_{name}.png")
        assert float(r["psnr"]) == pytest.approx(psnr(s, h), abs=1e-12)
        assert float(r["ssim"]) == pytest.approx(ssim(s, h), abs=1e-12)
        assert float(r["niqe"]) == pytest.approx(niqe(s), abs=1e-9)
        assert 0 < float(r["lpips"]) < 2 and 0 < float(r["dists"]) < 1
        assert r["clipiqa"] == r["maniqa"] == r["musiq"] == ""

    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_scored"] == 2 and summary["seed"] == 0 and summary["sr4_version"]
    assert summary["averages"]["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]))
    assert summary["settings"]["fidelity"] == {"modcrop": 4, "crop_border": 4, "channel": "y"}
    assert {"psnr", "ssim", "lpips", "dists", "niqe"} <= set(summary["metric_versions"])
    assert set(summary["unavailable"]) == {"clipiqa", "maniqa", "musiq"}
    assert "RN50.pt" in summary["unavailable"]["clipiqa"]
    assert "musiq_koniq_ckpt-e95806b9.pth" in summary["unavailable"]["musiq"]
    assert summary["score"] is None and "clipiqa" in summary["score_missing"]
    problems = {Path(e["file"]).name: e["problem"] for e in summary["errors"]}
    assert "0903x4.png" in problems and "not a readable" in problems["0903x4.png"]
    assert "--resize-mismatch" in problems["0904x4.png"] and "131x102" in problems["0904x4.png"]
    assert problems["0905.png"] == "no SR image for this HR image"

    page = Collect()
    page.feed((out / "report.html").read_text())
    assert page.svgs == 5  # one distribution per computed metric
    assert len(page.imgs) == 6  # bicubic / SR / HR for the best and the worst image
    for src in page.imgs:
        with Image.open(out / src) as im:
            im.load()
            assert im.size[0] > 0
    text = " ".join(page.text)
    assert "unavailable" in text and "0903x4.png" in text
    assert sorted(summary["outputs"]["crops"]) == sorted(page.imgs)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_resize_mismatch_option(folders, tmp_path):
    sr, hr = folders
    for f in (sr / "0903x4.png", hr / "0903.png", hr / "0905.png"):
        f.unlink()
    out = tmp_path / "o"
    rc = main(["eval", str(sr), str(hr), "--out", str(out), "--metrics", "psnr,ssim", "--resize-mismatch",
               "--no-report", "--quiet", "--channel", "rgb", "--crop-border", "0"])
    assert rc == 0
    rows = {r["image"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    assert set(rows) == {"0901", "0902", "0904"}
    assert "resized" in rows["0904"]["notes"]
    assert rows["0904"]["width"] == "128"
    assert not (out / "report.html").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["fidelity"]["channel"] == "rgb" and summary["errors"] == []


def test_niqe_too_small_is_reported_not_fatal(tmp_path):
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir()
    hr.mkdir()
    shutil.copy(DATA / "sr_rocket_gray.png", sr / "r.png")  # 80x90 gray: below NIQE's 96 px block
    shutil.copy(DATA / "hr_rocket_gray.png", hr / "r.png")
    out = tmp_path / "o"
    assert main(["eval", str(sr), str(hr), "--out", str(out), "--metrics", "psnr,niqe", "--quiet"]) == 0
    row = next(csv.DictReader((out / "metrics.csv").open()))
    assert math.isnan(float(row["niqe"])) and "at least 96x96" in row["notes"]
    assert float(row["psnr"]) == pytest.approx(psnr(rgb(DATA / "sr_rocket_gray.png"), rgb(DATA / "hr_rocket_gray.png")))


def test_list_weights(weights, capsys):
    assert main(["eval", "--list-weights", "--weights-dir", str(weights)]) == 0
    out = capsys.readouterr().out
    for name in [LPIPS_ALEX.name, ALEXNET.name, DISTS_W.name, VGG16.name, "RN50.pt", "ckpt_koniq10k.pt",
                 "musiq_koniq_ckpt-e95806b9.pth"]:
        assert name in out
    assert f"present: {weights / 'pyiqa' / LPIPS_ALEX.name}" in out
    assert "MISSING" in out


def test_usage_errors(folders, tmp_path, capsys):
    sr, hr = folders
    assert main(["eval", str(sr)]) == 2
    assert main(["eval", str(sr), str(hr), "--metrics", "psnr,fid"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["eval", str(sr), str(hr), "--sr-pattern", "(no_key_group)"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(empty), str(hr)]) == 2
    assert "no SR/HR pairs" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope"), str(hr)]) == 2


def test_custom_pattern_pairing(tmp_path):
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir()
    hr.mkdir()
    for n in ["img_001_SR.png", "img_002_SR.png"]:
        (sr / n).write_bytes(b"")
    (hr / "img_001.png").write_bytes(b"")
    pairs, problems = pair_files(sr, hr, r"(?P<key>.+)_SR")
    assert [(p.sr.name, p.hr.name) for p in pairs] == [("img_001_SR.png", "img_001.png")]
    assert [Path(f).name for f, _ in problems] == ["img_002_SR.png"]


def test_upscale_then_score(tmp_path):
    from sr4.image.resize import imresize

    lr, hr, sr = tmp_path / "lr", tmp_path / "hr", tmp_path / "sr"
    lr.mkdir()
    hr.mkdir()
    for key, name in (("0901", "coffee"), ("0902", "chelsea")):
        img = rgb(DATA / f"hr_{name}.png")[:96, :128]
        Image.fromarray(img).save(hr / f"{key}.png")
        Image.fromarray(imresize(img, 0.25)).save(lr / f"{key}x4.png")
    out = tmp_path / "o"
    args = ["eval", str(sr), str(hr), "--lr-dir", str(lr), "--out", str(out), "--metrics", "psnr,ssim", "--quiet",
            "--model", "bicubic"]
    assert main(args) == 0
    assert sorted(p.name for p in sr.iterdir()) == ["0901x4.png", "0902x4.png"]
    assert Image.open(sr / "0901x4.png").size == (128, 96)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_scored"] == 2 and summary["upscaled"]["model"] == "bicubic"
    assert summary["upscaled"]["images_written"] == ["0901x4.png", "0902x4.png"]
    rows = {r["image"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    expected = psnr(rgb(sr / "0902x4.png"), rgb(hr / "0902.png"))
    assert float(rows["0902"]["psnr"]) == pytest.approx(expected) and 20 < expected < 40
    assert "made by sr4" in (out / "report.html").read_text()
    assert main(args) == 2  # outputs exist: refuse without --overwrite
    assert main(args + ["--overwrite"]) == 0


def test_pixels_become_8bit_rgb():
    from sr4.image.convert import to_rgb8

    la = np.stack([np.full((2, 2), 7, np.uint8), np.full((2, 2), 200, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb8(la), np.full((2, 2, 3), 7, np.uint8))  # alpha dropped, gray -> G,G,G
    rgba16 = np.zeros((1, 3, 4), np.uint16)
    rgba16[0, :, 0] = [0, 32896, 65535]  # 65535 -> 255, 32896 = 128 * 257 -> 128
    out = to_rgb8(rgba16)
    assert out.shape == (1, 3, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="unsupported"):
        to_rgb8(np.zeros((2, 2, 3), np.float32))


def test_upscale_with_the_snucv_pipeline_then_score(tmp_path):
    from refiner_fixtures import shared_tiny_model_folder

    from sr4.pipeline.two_stage import Pipeline

    lr, hr, sr = tmp_path / "lr", tmp_path / "hr", tmp_path / "sr"
    lr.mkdir()
    hr.mkdir()
    img = rgb(DATA / "hr_coffee.png")[:64, :64]
    Image.fromarray(img).save(hr / "0901.png")
    Image.fromarray(img[::4, ::4]).save(lr / "0901x4.png")
    folder = shared_tiny_model_folder()
    out = tmp_path / "o"
    assert main(["eval", str(sr), str(hr), "--lr-dir", str(lr), "--out", str(out), "--metrics", "psnr",
                 "--quiet", "--no-report", "--pipeline", "snucv", "--model-dir", str(folder), "--seed", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["upscaled"]["pipeline"] == "snucv" and summary["upscaled"]["model"] == str(folder)
    # The image it scored is what sr4.Pipeline gives for the same folder and seed.
    expected = Pipeline.from_model_dir(folder, pipeline="snucv", seed=3)(Image.open(lr / "0901x4.png"))
    assert np.array_equal(rgb(sr / "0901x4.png"), np.asarray(expected.convert("RGB")))
