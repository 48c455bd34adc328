"""NTIRE 2025 harness entry: main(model_dir, input_path, output_path, device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from refiner_fixtures import shared_tiny_model_folder

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("sr4.networks.mambairv2")

from sr4.pipeline.harness import list_inputs, main  # noqa: E402
from sr4.pipeline.two_stage import Pipeline  # noqa: E402


def test_harness_writes_every_image_under_its_name(tmp_path):
    model_dir = shared_tiny_model_folder()
    lr_dir = tmp_path / "LR"
    lr_dir.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("0901x4.png", (14, 12)), ("0902x4.PNG", (10, 9)), ("0903x4.jpg", (8, 8))):
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(lr_dir / name)
    (lr_dir / "notes.txt").write_text("not an image")
    assert [p.name for p in list_inputs(lr_dir)] == ["0901x4.png", "0902x4.PNG", "0903x4.jpg"]

    out_dir = tmp_path / "results" / "sr4" / "test"
    written = main(model_dir=str(model_dir), input_path=str(lr_dir), output_path=str(out_dir),
                   device=torch.device("cpu"))
    assert sorted(p.name for p in out_dir.iterdir()) == ["0901x4.png", "0902x4.PNG", "0903x4.jpg"]
    assert len(written) == 3
    with Image.open(out_dir / "0901x4.png") as im:
        assert im.size == (56, 48)
        got = np.asarray(im.convert("RGB"))
    # same pixels as the Pipeline called directly (default seed 0, snucv, no colour fix)
    pipe = Pipeline.from_model_dir(model_dir, device="cpu")
    with Image.open(lr_dir / "0901x4.png") as im:
        expected = np.asarray(pipe(im.convert("RGB")))
    assert np.array_equal(got, expected)


def test_harness_missing_input_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="input folder"):
        main(tmp_path / "model", tmp_path / "nope", tmp_path / "out", "cpu")


def test_harness_never_writes_over_its_inputs_nor_reads_temp_files(tmp_path):
    lr_dir = tmp_path / "LR"
    lr_dir.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(lr_dir / "0901x4.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(lr_dir / ".sr4-tmp-abcdef-1-0-abcdef.0902x4.png")
    assert [p.name for p in list_inputs(lr_dir)] == ["0901x4.png"]
    before = (lr_dir / "0901x4.png").read_bytes()
    with pytest.raises(ValueError, match="is the input folder"):
        main(tmp_path / "model", lr_dir, tmp_path / "." / "LR", "cpu")
    assert (lr_dir / "0901x4.png").read_bytes() == before
