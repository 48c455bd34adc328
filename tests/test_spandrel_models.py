"""Any model spandrel loads, run by sr4 (`sr4.models.spandrel`): ESRGAN, Compact and SwinIR checkpoints written in
their official key formats (tests/spandrel_fixtures.py) through `sr4.Upscaler`, `sr4 upscale`, `sr4 info`,
`sr4 eval --lr-dir`, the web app's loader and SNUCV's stage U, against spandrel's own forward."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("spandrel", reason="running other architectures needs the spandrel extra: pip install "
                                       "'sr4[spandrel]'")

import spandrel  # noqa: E402
from spandrel_fixtures import compact_state_dict, esrgan_state_dict, mambairv2_model, swinir_state_dict  # noqa: E402

import sr4  # noqa: E402
from sr4.cli import main  # noqa: E402
from sr4.errors import CheckpointError, ConfigError  # noqa: E402
from sr4.models.loading import load_model  # noqa: E402
from sr4.models.spandrel_net import SpandrelNet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: official formats: Real-ESRGAN's releases hold {'params_ema': sd}, realesr-general-x4v3 {'params': sd}, SwinIR
#: {'params': sd}; a bare safetensors file as chaiNNer's converted models.
MODELS = {
    "esrgan_x4": (lambda: esrgan_state_dict(4), "params_ema"),
    "esrgan_x2": (lambda: esrgan_state_dict(2), "params_ema"),
    "compact_x4": (lambda: compact_state_dict(4), "params"),
    "compact_x2": (lambda: compact_state_dict(2, seed=1), "safetensors"),
    "swinir_x4": (lambda: swinir_state_dict(4), "params"),
}
ARCH = {"esrgan": "ESRGAN", "compact": "Compact", "swinir": "SwinIR"}


def write_model(folder: Path, name: str) -> Path:
    make, layout = MODELS[name]
    sd = make()
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = folder / f"{name}.pth"
        torch.save({layout: sd}, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("spandrel_models")
    return {name: write_model(folder, name) for name in MODELS}


def spandrels_forward(path: Path, x: torch.Tensor) -> torch.Tensor:
    """spandrel's own loader and call on (1, 3, H, W)."""
    descriptor = spandrel.ModelLoader().load_from_file(path)
    return descriptor.eval()(x)


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the same numbers as spandrel


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [(18, 21), (10, 13), (3, 5)], ids=["plain", "padded", "tiny"])
def test_untiled_equals_spandrels_own_forward(models, name, size):
    """One pass through sr4 (its padding, its image handling) gives spandrel's output: SwinIR needs 16 px, so the
    smaller sizes are padded (by reflection as far as it reaches, then replication: spandrel's rule)."""
    x = _image(*size)
    expected = spandrels_forward(models[name], x)[0]
    got = sr4.Upscaler(models[name], tile=None, device="cpu", dtype="fp32")(x[0])
    assert got.shape == expected.shape
    # the same module on the same padded input: equal up to float32 rounding
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


#: tiled (tile 32, overlap 16) against one pass on a 64x72 image: bounds of (max, mean) |difference|. Measured on these
#: random nets (torch 2.14.1, one thread, seeds 0-1), max / mean: ESRGAN x4 0.0003 / 8e-6, ESRGAN x2 0.018 / 6e-4
#: (pixel-unshuffled: tiles start on its 4 px grid, else 0.66 / 0.036), Compact x4 0.008 / 1.5e-4, Compact x2
#: 0.005 / 1.3e-4; SwinIR 0.67 / 0.018: a window transformer sees other windows in a tile (no max bound; spandrel
#: marks it "discouraged", so sr4 runs it in one pass whenever it fits). Bounds: about 3x the measurement.
TILED_BOUND = {"esrgan_x4": (0.001, 3e-5), "esrgan_x2": (0.05, 0.002), "compact_x4": (0.025, 5e-4),
               "compact_x2": (0.015, 5e-4), "swinir_x4": (None, 0.05)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tiled_stays_within_the_measured_bound(models, name):
    x = _image(64, 72, seed=1)[0]
    whole = sr4.Upscaler(models[name], tile=None, device="cpu", dtype="fp32")(x)
    tiled = sr4.Upscaler(models[name], tile=32, tile_overlap=16, device="cpu", dtype="fp32")(x)
    diff = (tiled - whole).abs()
    max_bound, mean_bound = TILED_BOUND[name]
    assert max_bound is None or diff.max() <= max_bound, float(diff.max())
    assert diff.mean() <= mean_bound, float(diff.mean())


def test_grayscale_models_run_on_each_plane(tmp_path):
    path = tmp_path / "gray.pth"
    torch.save({"params": compact_state_dict(2, channels=1)}, path)
    x = _image(9, 11)
    expected = torch.cat([spandrels_forward(path, x[:, c:c + 1]) for c in range(3)], dim=1)[0]
    got = sr4.Upscaler(path, tile=None, device="cpu", dtype="fp32")(x[0])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- what the descriptor says


@pytest.mark.parametrize("name, scale, minimum, dtypes, tiling", [
    ("esrgan_x4", 4, 2, ("float32", "float16", "bfloat16"), "supported"),
    ("compact_x2", 2, 1, ("float32", "float16", "bfloat16"), "supported"),
    ("swinir_x4", 4, 16, ("float32", "bfloat16"), "discouraged")])
def test_descriptor_is_spandrels(models, name, scale, minimum, dtypes, tiling):
    d = load_model(models[name])
    theirs = spandrel.ModelLoader().load_from_file(models[name])
    assert d.arch.id == theirs.architecture.id == ARCH[name.split("_")[0]]
    assert (d.scale, d.size_requirements.minimum, d.tiling.value) == (scale, minimum, tiling)
    assert tuple(str(t).removeprefix("torch.") for t in d.supported_dtypes) == dtypes
    assert d.hyperparameters["loaded_by"] == f"spandrel {spandrel.__version__}"
    assert isinstance(d.model, SpandrelNet) and not d.model.training
    own = d.model.net.state_dict()
    assert own.keys() == theirs.model.state_dict().keys()
    if "float16" not in dtypes:
        with pytest.raises(ValueError, match="not float16"):
            sr4.Upscaler(models[name], device="cpu", dtype="fp16")


def test_sr4s_own_models_never_go_through_spandrel(tmp_path):
    """MambaIRv2 is sr4's (its generator, its draws), even after sr4's MambaIRv2 was installed into spandrel."""
    from sr4.integrations.spandrel import install

    install()
    path = tmp_path / "m.pth"
    torch.save({"params": mambairv2_model("lightSR_x4").state_dict()}, path)
    d = load_model(path)
    assert d.arch.id == "MambaIRv2Light" and d.stochastic and not isinstance(d.model, SpandrelNet)


def test_an_unrecognised_file_gets_one_line_listing_what_was_tried(tmp_path, capsys):
    path = tmp_path / "mystery.pth"
    torch.save({"params": {"encoder.weight": torch.zeros(4, 3, 3, 3)}}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    assert "not a MambaIRv2 checkpoint" in message and "not a spandrel checkpoint" in message
    n = sum(1 for a in spandrel.MAIN_REGISTRY.architectures() if a.architecture.id not in ("MambaIRv2",
                                                                                          "MambaIRv2Light"))
    assert f"none of the {n} architectures of spandrel {spandrel.__version__}" in message
    assert "ESRGAN" in message and "SwinIR" in message
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a spandrel checkpoint" in err[0]


def test_a_damaged_foreign_checkpoint_names_the_file_and_architecture(tmp_path):
    sd = compact_state_dict(4)
    sd["body.4.weight"] = sd["body.4.weight"][:8]
    path = tmp_path / "broken.pth"
    torch.save({"params": sd}, path)
    with pytest.raises(CheckpointError, match=r"broken.pth: spandrel recognises a RealESRGAN Compact checkpoint but "
                                              r"cannot load it \(RuntimeError: .*size mismatch for body.4.weight"):
        load_model(path)
    sd = compact_state_dict(4)
    sd["body.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save({"params": sd}, path)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_model(path)


def test_sr4_info_describes_a_foreign_model(models, capsys):
    assert main(["info", str(models["swinir_x4"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["arch"], info["scale"], info["min_size"], info["tiling"]) == ("SwinIR", 4, 16, "discouraged")
    assert info["runs_in"] == ["float32", "bfloat16"] and info["purpose"] == "SR"
    assert info["hyperparameters"]["window_size"] == 8 and info["hyperparameters"]["embed_dim"] == 16
    assert main(["info", str(models["compact_x2"])]) == 0
    out = capsys.readouterr().out
    assert "architecture:  Compact (RealESRGAN Compact)" in out and "scale:         x2 (SR)" in out
    assert "loaded_by: spandrel" in out and "img_range cannot be read" not in out


# ----------------------------------------------------------------------------- commands


def _folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / f"im{i}.png")
    return root


def test_cli_upscale_writes_decodable_files_of_the_models_scale(models, tmp_path, capsys):
    src = _folder(tmp_path / "in", [(12, 10), (7, 9)])
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    rc = main(["upscale", str(src), "-o", str(out), "--model", str(models["compact_x2"]), "--device", "cpu"])
    assert rc == 1  # the batch goes on past the broken file and reports it in the exit code
    for name, (h, w) in (("im0.png", (12, 10)), ("im1.png", (7, 9))):
        with Image.open(out / name) as im:
            im.load()
            assert im.size == (2 * w, 2 * h) and im.mode == "RGB"
    assert not (out / "broken.png").exists()
    assert sorted(p.name for p in out.iterdir()) == ["im0.png", "im1.png"]  # no temporary files left
    capsys.readouterr()
    # --outscale resizes the model's x2 to x3; --tile tiles the foreign model like any other
    rc = main(["upscale", str(src / "im0.png"), "-o", str(tmp_path / "o3"), "--model", str(models["esrgan_x2"]),
               "--outscale", "3", "--tile", "8", "--device", "cpu"])
    assert rc == 0
    with Image.open(tmp_path / "o3" / "im0.png") as im:
        assert im.size == (30, 36)


def test_cli_upscale_shards_a_foreign_model(models, tmp_path, monkeypatch):
    src = _folder(tmp_path / "in", [(6, 7), (8, 6), (5, 5), (7, 7)])
    out = tmp_path / "out"
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(["upscale", str(src), "-o", str(out), "--model", str(models["compact_x4"]), "--device",
                     "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"im{i}.png" for i in range(4)]


def test_cli_unrecognised_model_exits_2_with_one_line(tmp_path, capsys):
    src = _folder(tmp_path / "in", [(6, 7)])
    bad = tmp_path / "mystery.safetensors"
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(2, 2)}, str(bad))
    assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mystery.safetensors" in err[0] and "not a spandrel checkpoint" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_eval_lr_dir_scores_a_foreign_model(models, tmp_path):
    lr = _folder(tmp_path / "lr", [(8, 9), (6, 6)])
    hr = tmp_path / "hr"
    hr.mkdir()
    for p in lr.iterdir():
        with Image.open(p) as im:
            im.resize((im.width * 4, im.height * 4), Image.BICUBIC).save(hr / p.name)
    sr, ev = tmp_path / "sr", tmp_path / "ev"
    assert main(["eval", str(sr), str(hr), "--lr-dir", str(lr), "--model", str(models["esrgan_x4"]), "-o", str(ev),
                 "--metrics", "psnr", "--no-report", "--quiet", "--device", "cpu"]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["upscaled"]["model"] == str(models["esrgan_x4"])
    rows = (ev / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + two images
    # the scored images are sr4 upscale's (spandrel's forward): one checked against spandrel directly
    with Image.open(sr / "im1.png") as im:
        got = np.asarray(im.convert("RGB"))
    x = torch.from_numpy(np.asarray(Image.open(lr / "im1.png").convert("RGB")).copy()).permute(2, 0, 1)[None] / 255
    expected = (spandrels_forward(models["esrgan_x4"], x.float())[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(got.astype(float) - expected).max() <= 1


def test_the_web_app_offers_foreign_models(models):
    from sr4.pipeline.factory import ProcessorOptions
    from sr4.web.candidates import list_candidates, load_processor

    candidates = list_candidates([models["swinir_x4"], models["compact_x2"]])
    by_label = {c.label: c for c in candidates}
    processor = load_processor(by_label["compact_x2.safetensors"], ProcessorOptions(device="cpu", tile=None))
    assert processor.scale == 2
    x = _image(8, 9)[0]
    torch.testing.assert_close(processor(x), spandrels_forward(models["compact_x2"], x[None])[0], rtol=0, atol=1e-6)
    assert load_processor(by_label["swinir_x4.pth"], ProcessorOptions(device="cpu")).scale == 4


# ----------------------------------------------------------------------------- SNUCV with a foreign stage U


@pytest.fixture(scope="module")
def model_dir():
    pytest.importorskip("diffusers")
    from refiner_fixtures import shared_tiny_model_folder

    return shared_tiny_model_folder()


@torch.no_grad()
def test_snucv_with_a_compact_stage_u_equals_spandrel_then_the_refiner(models, model_dir, tmp_path):
    import shutil

    from sr4.ops import quantize_8bit_ste
    from sr4.pipeline.configs import SNUCVConfig
    from sr4.pipeline.snucv import SNUCVPipeline
    from sr4.pipeline.two_stage import Pipeline
    from sr4.refiner.tsdsr import TSDSRRefiner

    folder = tmp_path / "folder"  # without SNUCV's own mamba_trained.pth: not needed when U is given
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("mamba_trained.pth"))
    compact = models["compact_x4"]
    pipe = Pipeline.from_model_dir(folder, device="cpu", upsampler=compact, upsampler_tile=None,
                                   latent_tile=8, latent_overlap=2)
    assert isinstance(pipe, SNUCVPipeline) and pipe.scale == 4 and "stage U" in pipe.model_name
    lr = _image(12, 10, seed=4)
    out = pipe(lr[0], seed=3)

    refiner = TSDSRRefiner.from_model_dir(folder, config=pipe.refiner.config)
    up = spandrels_forward(compact, lr)
    expected = refiner(quantize_8bit_ste(up), torch.Generator().manual_seed(3)).clamp(0, 1)[0]
    assert out.shape == (3, 48, 40)
    assert (out - expected).abs().max() < 1e-5
    # the config dataclass is the same thing as the override
    config = SNUCVConfig(device="cpu", upsampler=str(compact))
    by_config = SNUCVPipeline.from_model_dir(folder, config, upsampler_tile=None, latent_tile=8, latent_overlap=2)
    assert torch.equal(by_config(lr[0], seed=3), out)


def test_snucv_refuses_a_stage_u_that_is_not_x4_and_tsdsr_refuses_a_model(models, model_dir, tmp_path):
    from sr4.pipeline.two_stage import Pipeline

    with pytest.raises(ConfigError, match=r"stage U of the snucv pipeline must upscale x4.*compact_x2.*is x2"):
        Pipeline.from_model_dir(model_dir, device="cpu", upsampler=models["compact_x2"])
    src = _folder(tmp_path / "in", [(8, 8)])
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--pipeline", "tsdsr", "--model-dir",
                 str(model_dir), "--model", str(models["compact_x4"]), "--device", "cpu"]) == 2


@pytest.mark.slow
def test_cli_snucv_with_a_foreign_stage_u(models, model_dir, tmp_path):
    src = _folder(tmp_path / "in", [(12, 14)])
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--pipeline", "snucv", "--model-dir", str(model_dir),
                 "--model", str(models["esrgan_x4"]), "--device", "cpu", "--latent-tile", "8",
                 "--latent-overlap", "2"]) == 0
    with Image.open(out / "im0.png") as im:
        im.load()
        assert im.size == (56, 48)
    assert sys.modules.get("spandrel") is not None
