"""`sr4 upscale`: batches of good and bad files, existing outputs, checkpoints, options, pipeline hook."""

from __future__ import annotations

import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr4.cli import main
from sr4.image.io import read_image, write_image
from sr4.pipeline.base import ImageProcessor

RNG = np.random.default_rng(0)


def _img(path: Path, h: int = 10, w: int = 12, c: int = 3, dtype: type = np.uint8) -> Path:
    peak = 255 if dtype == np.uint8 else 65535
    write_image(path, RNG.integers(0, peak + 1, (h, w, c)).astype(dtype))
    return path


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".")]


def _bomb_png(path: Path) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_folder_of_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    _img(src / "rgb.png")
    _img(src / "gray.png", c=1)
    _img(src / "rgba.png", c=4)
    _img(src / "deep.png", c=3, dtype=np.uint16)
    _img(src / "photo.jpg")
    (src / "readme.txt").write_text("not an image: ignored inside folders")
    rc = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--tile", "8", "--tile-overlap", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "5 done, 0 skipped, 0 failed" in captured.out
    assert "bicubic" not in captured.err  # no model: the bundled default network, no bicubic notice
    out = {p.name: read_image(p) for p in (tmp_path / "out").iterdir()}
    assert sorted(out) == ["deep.png", "gray.png", "photo.jpg", "rgb.png", "rgba.png"]
    assert out["gray.png"].mode == "L" and out["rgba.png"].mode == "RGBA" and out["rgb.png"].mode == "RGB"
    assert out["deep.png"].bits == 16 and out["rgb.png"].size == (48, 40)
    assert not _leftovers(tmp_path / "out")


def test_bad_inputs_batch_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in"
    good = _img(src / "good.png")
    (src / "empty.png").write_bytes(b"")
    full_png = _img(tmp_path / "full.png", 40, 40).read_bytes()
    (src / "cut.png").write_bytes(full_png[: len(full_png) // 2])
    _img(tmp_path / "full.jpg", 40, 40)
    full_jpg = (tmp_path / "full.jpg").read_bytes()
    (src / "cut.jpg").write_bytes(full_jpg[: len(full_jpg) // 2])
    (src / "text.png").write_text("just some text")
    _bomb_png(src / "huge.png")
    secret = _img(src / "secret.png")
    real_open = open

    def deny(file: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if Path(str(file)) == secret:  # unreadable permissions, also when the tests run as root
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", deny)
    out = tmp_path / "out"
    rc = main(["upscale", str(src), "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "1 done, 0 skipped, 6 failed" in captured.out
    err = captured.err
    for name, problem in [("empty.png", "empty file"), ("cut.png", "truncated"), ("cut.jpg", "truncated"),
                          ("text.png", "not a readable"), ("huge.png", "100,000,000 pixels exceeds"),
                          ("secret.png", "permission denied")]:
        line = next(line for line in err.splitlines() if name in line)
        assert "FAILED" in line and problem in line, line
    assert [p.name for p in out.iterdir()] == [good.name]
    assert not _leftovers(out)


def test_max_pixels_raises_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = _bomb_png(tmp_path / "huge.png")
    assert main(["upscale", str(bomb), "-o", str(tmp_path / "o"), "--max-pixels", "200000000"]) == 1
    err = capsys.readouterr().err
    assert "truncated" in err and "exceeds" not in err


def test_existing_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _img(tmp_path / "a.png")
    out = tmp_path / "out"
    (out).mkdir()
    (out / "a.png").write_bytes(b"old")
    assert main(["upscale", str(src), "-o", str(out)]) == 1
    assert "exists (use --overwrite or --skip-existing)" in capsys.readouterr().err
    assert main(["upscale", str(src), "-o", str(out), "--skip-existing"]) == 0
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert (out / "a.png").read_bytes() == b"old"
    assert main(["upscale", str(src), "-o", str(out), "--overwrite"]) == 1  # b"old" is not an sr4 output
    assert "was not written by sr4; left alone" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == b"old"
    (out / "a.png").unlink()
    assert main(["upscale", str(src), "-o", str(out), "--outscale", "2"]) == 0
    assert main(["upscale", str(src), "-o", str(out), "--overwrite"]) == 0  # an earlier output is replaced
    assert read_image(out / "a.png").size == (48, 40)
    with pytest.raises(SystemExit):  # the two are exclusive
        main(["upscale", str(src), "-o", str(out), "--overwrite", "--skip-existing"])


def test_unwritable_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _img(tmp_path / "a.png")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    assert main(["upscale", str(src), "-o", str(blocker)]) == 2
    assert "not a folder" in capsys.readouterr().err
    # Found before any image is computed: a usage error, not a per-file failure.
    assert main(["upscale", str(src), "-o", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and str(blocker / "sub") in err


def _tiny_mambairv2_state() -> dict[str, torch.Tensor]:
    from sr4.networks.mambairv2 import MambaIRv2

    torch.manual_seed(0)
    net = MambaIRv2(upscale=4, embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=8, inner_rank=4,
                    num_tokens=8, mlp_ratio=1.0, upsampler="pixelshuffle")
    return net.state_dict()


def test_model_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    src = _img(tmp_path / "a.png", 9, 11)
    good = tmp_path / "tiny.pth"
    torch.save({"params": _tiny_mambairv2_state()}, good)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o1"), "--model", str(good), "--seed", "3"]) == 0
    assert read_image(tmp_path / "o1" / "a.png").size == (44, 36)
    assert "bicubic" not in capsys.readouterr().err

    other = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, other)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o2"), "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and str(other) in err

    cut = tmp_path / "cut.pth"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert main(["upscale", str(src), "-o", str(tmp_path / "o3"), "--model", str(cut)]) == 2
    err = capsys.readouterr().err
    assert str(cut) in err and ("truncated" in err or "corrupt" in err)
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())


def test_naming_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _img(tmp_path / "in" / "a.png", 10, 20)
    out = tmp_path / "out"
    rc = main(["upscale", str(src), "-o", str(out), "--suffix", "_big", "--ext", "jpg", "--outscale", "2"])
    assert rc == 0
    assert read_image(out / "a_big.jpg").size == (40, 20)
    assert main(["upscale", str(src), "-o", str(out), "--ext", "tiff", "--tile", "0"]) == 0
    assert read_image(out / "a.tiff").size == (80, 40)
    capsys.readouterr()


def test_recursive_globs_and_collisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    _img(src / "top.png", 5, 5)
    _img(src / "sub" / "deep.png", 5, 5)
    assert main(["upscale", str(src), "-o", str(tmp_path / "flat")]) == 0
    assert [p.name for p in (tmp_path / "flat").rglob("*.png")] == ["top.png"]
    assert main(["upscale", str(src), "-o", str(tmp_path / "tree"), "-r"]) == 0
    assert (tmp_path / "tree" / "sub" / "deep.png").is_file() and (tmp_path / "tree" / "top.png").is_file()
    assert main(["upscale", str(src / "*.png"), "-o", str(tmp_path / "glob")]) == 0
    assert [p.name for p in (tmp_path / "glob").iterdir()] == ["top.png"]
    _img(src / "top.jpg", 5, 5)
    assert main(["upscale", str(src / "top.png"), str(src / "top.jpg"), "-o", str(tmp_path / "c"), "--ext",
                 "png"]) == 1
    assert "is also the output of" in capsys.readouterr().err
    assert main(["upscale", str(src / "top.png"), "-o", str(src)]) == 1
    assert "would replace the input itself" in capsys.readouterr().err


def test_pipeline_hook(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    src = _img(tmp_path / "a.png", 6, 7)
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--pipeline", "snucv"]) == 2
    assert "--model-dir" in capsys.readouterr().err

    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--pipeline", "tsdsr", "--model-dir", "m",
                 "--model", "x.pth"]) == 2
    assert "--model applies to --pipeline upsampler and snucv (its stage U)" in capsys.readouterr().err

    calls: list[dict] = []

    class FakePipeline(ImageProcessor):
        scale = 4

        def upscale_rgb(self, x, generator, progress=None):  # type: ignore[no-untyped-def]
            return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")

        @classmethod
        def from_model_dir(cls, model_dir, **kwargs):  # type: ignore[no-untyped-def]
            calls.append({"model_dir": model_dir, **kwargs})
            return cls()

    module = types.ModuleType("sr4.pipeline.two_stage")
    module.Pipeline = FakePipeline  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sr4.pipeline.two_stage", module)
    rc = main(["upscale", str(src), "-o", str(tmp_path / "o"), "--pipeline", "tsdsr", "--model-dir", "models",
               "--latent", "mean", "--device", "cpu", "--seed", "7", "--tile", "32", "--vae-tiling", "off",
               "--vae-tile-stats", "exact"])
    assert rc == 0
    defaults = {"vae_encoder_tile": 1024, "vae_decoder_tile": 224, "latent_tile": 64, "latent_overlap": 8,
                "process_size": 512, "upscale": 4, "seed_stream": "image"}
    assert calls == [{"model_dir": "models", "pipeline": "tsdsr", "latent": "mean", "color_fix": "wavelet",
                      "device": "cpu", "dtype": "auto", "seed": 7, "merge_lora": False, "vae_tiling": False,
                      "vae_tile_stats": "exact", "upsampler_tile": 32, "upsampler_tile_overlap": 16, "upsampler": None,
                      **defaults}]
    out = np.asarray(Image.open(tmp_path / "o" / "a.png"))
    np.testing.assert_array_equal(out, np.asarray(Image.open(src)).repeat(4, 0).repeat(4, 1))
    # TSD-SR's own options, each with its official meaning
    calls.clear()
    assert main(["upscale", str(src), "-o", str(tmp_path / "o2"), "--pipeline", "tsdsr", "--model-dir", "models",
                 "--device", "cpu", "--vae-tiling", "on", "--vae-tile-stats", "tsdsr", "--vae-encoder-tile", "256",
                 "--vae-decoder-tile", "32", "--latent-tile", "32", "--latent-overlap", "4", "--process-size", "256",
                 "--upscale", "2", "--seed-stream", "run"]) == 0
    assert {k: calls[0][k] for k in (*defaults, "vae_tile_stats", "vae_tiling")} == {
        "vae_encoder_tile": 256, "vae_decoder_tile": 32, "latent_tile": 32, "latent_overlap": 4, "process_size": 256,
        "upscale": 2, "seed_stream": "run", "vae_tile_stats": "tsdsr", "vae_tiling": True}
    assert main(["upscale", str(src), "-o", str(tmp_path / "o3"), "--pipeline", "snucv", "--model-dir", "models",
                 "--upscale", "2"]) == 2
    assert "--upscale applies to --pipeline tsdsr" in capsys.readouterr().err
