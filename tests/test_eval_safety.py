"""`sr4 eval` checks its output folder first, never scores its own files, and writes spreadsheet-safe CSV."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from image_fixtures import animation

from sr4.cli import main
from sr4.image.io import write_image
from sr4.utils import atomic

RNG = np.random.default_rng(9)
QUICK = ["--metrics", "psnr,ssim", "--quiet"]


def _pair(sr: Path, hr: Path, key: str, sr_name: str | None = None) -> None:
    img = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    write_image(hr / f"{key}.png", img)
    noisy = np.clip(img.astype(int) + RNG.integers(-9, 10, img.shape), 0, 255).astype(np.uint8)
    write_image(sr / (sr_name or f"{key}x4.png"), noisy)


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    for key in ("0901", "0902"):
        _pair(sr, hr, key)
    return sr, hr


def _never_scored(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("scoring started before --out was checked")

    monkeypatch.setattr("sr4.metrics.evaluate.evaluate_pairs", fail)


def test_unusable_out_is_found_before_scoring(dirs: tuple[Path, Path], tmp_path: Path, read_only_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sr, hr = dirs
    _never_scored(monkeypatch)
    a_file = tmp_path / "report.txt"
    a_file.write_text("mine")
    for out, says in ((a_file, "not a folder"), (a_file / "sub", "cannot write there"),
                      (read_only_dir, "cannot write there")):
        assert main(["eval", str(sr), str(hr), "--out", str(out), *QUICK]) == 2
        assert says in capsys.readouterr().err
    assert a_file.read_text() == "mine"


def test_files_sr4_did_not_write_are_never_replaced(dirs: tuple[Path, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    sr, hr = dirs
    out = tmp_path / "out"
    assert main(["eval", str(sr), str(hr), "--out", str(out), *QUICK]) == 0
    assert main(["eval", str(sr), str(hr), "--out", str(out), *QUICK]) == 0  # its own report: replaced
    (out / "metrics.csv").write_text("my,own,table\n")
    with monkeypatch.context() as m:
        _never_scored(m)
        assert main(["eval", str(sr), str(hr), "--out", str(out), *QUICK]) == 2
    assert "metrics.csv already there and not written by sr4 eval" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == "my,own,table\n"


def test_out_in_sr_dir_twice_never_scores_its_own_crops(dirs: tuple[Path, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    sr, hr = dirs
    runs = []
    for _ in range(2):
        assert main(["eval", str(sr), str(hr), "--out", str(sr), *QUICK]) == 0
        runs.append((sr / "metrics.csv").read_text())
        assert "skipped" not in capsys.readouterr().err
    assert runs[0] == runs[1]
    crops = sorted(p.name for p in (sr / "crops").iterdir())
    assert len(crops) == 6 and {c.split("_")[0] for c in crops} == {"best", "worst"}
    assert {c.split("_")[1] for c in crops} == {"0901", "0902"}
    assert sorted(p.name for p in sr.iterdir() if p.suffix == ".png") == ["0901x4.png", "0902x4.png"]


def test_temporary_and_hidden_files_are_never_scored(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    sr, hr = dirs
    write_image(sr / f"{atomic.TEMP_PREFIX}abcdef-1-0-abcdef.0903x4.png", np.zeros((32, 32, 3), np.uint8))
    write_image(sr / ".0903x4.png", np.zeros((32, 32, 3), np.uint8))
    write_image(hr / "0903.png", np.zeros((32, 32, 3), np.uint8))
    out = tmp_path / "out"
    assert main(["eval", str(sr), str(hr), "--out", str(out), "--no-report", *QUICK]) == 1  # 0903 has no SR image
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["image"] for r in rows] == ["0901", "0902"]


def test_csv_cells_never_start_a_formula(tmp_path: Path) -> None:
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    keys = ["=HYPERLINK(1)", "+1", "-2", "@SUM(A1)", "plain"]
    for key in keys:
        _pair(sr, hr, key, sr_name=f"{key}.png")
    out = tmp_path / "out"
    assert main(["eval", str(sr), str(hr), "--out", str(out), "--no-report", *QUICK]) == 0
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.reader(fh))[1:]
    by_key = {row[0]: row for row in rows}
    assert sorted(by_key) == sorted(["'=HYPERLINK(1)", "'+1", "'-2", "'@SUM(A1)", "plain"])
    for row in rows:
        for cell in (row[0], row[1], row[2], row[-1]):
            assert cell[:1] not in ("=", "+", "-", "@")
        assert float(row[5]) > 20  # numbers stay numbers


def test_lr_dir_equal_to_sr_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lr, hr = tmp_path / "lr", tmp_path / "hr"
    write_image(lr / "0901.png", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    write_image(hr / "0901.png", RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    before = hashlib.sha256((lr / "0901.png").read_bytes()).hexdigest()
    assert main(["eval", str(lr), str(hr), "--lr-dir", str(lr), "--overwrite", "--model", "bicubic",
                 "--out", str(tmp_path / "o"), *QUICK]) == 2
    assert "would replace the input itself" in capsys.readouterr().err
    assert hashlib.sha256((lr / "0901.png").read_bytes()).hexdigest() == before


def test_an_animated_sr_image_is_reported_not_scored_as_one_frame(dirs: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    sr, hr = dirs
    animation(sr / "0903x4.png", [RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)])
    write_image(hr / "0903.png", RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert main(["eval", str(sr), str(hr), "--out", str(tmp_path / "o"), "--no-report", *QUICK]) == 1
    assert "0903x4.png: 2 frames (animated PNG)" in capsys.readouterr().err
