"""sr4.Pipeline (SNUCV and TSD-SR) on tiny random models in SNUCV's folder layout."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from refiner_fixtures import shared_tiny_model_folder

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("sr4.networks.mambairv2")

import sr4  # noqa: E402
from sr4.ops import quantize_8bit_ste  # noqa: E402
from sr4.pipeline.snucv import snucv_forward  # noqa: E402
from sr4.pipeline.tsdsr import tsdsr_process_size  # noqa: E402
from sr4.pipeline.two_stage import Pipeline  # noqa: E402
from sr4.refiner.colorfix import pil_bicubic, upsample_like_pil, wavelet_split  # noqa: E402
from sr4.refiner.folder import ModelFolderError  # noqa: E402
from sr4.refiner.tsdsr import RefinerConfig, TSDSRRefiner  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return shared_tiny_model_folder()


@pytest.fixture(scope="module")
def snucv(model_dir):
    return Pipeline.from_model_dir(model_dir, device="cpu", upsampler_tile=None)


def _lr(h: int = 12, w: int = 14, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, 3, h // 2, w // 2, generator=g), size=(h, w), mode="bilinear")


def _tiny_upsampler(model_dir):
    from refiner_fixtures import TINY_MAMBA

    from sr4.networks.mambairv2 import MambaIRv2

    net = MambaIRv2(**TINY_MAMBA).eval()
    net.load_state_dict(torch.load(model_dir / "mamba_trained.pth", weights_only=True)["params"])
    return net.requires_grad_(False)


def test_public_name_and_quantiser():
    assert sr4.Pipeline is Pipeline
    x = torch.tensor([0.0, 0.5, 0.1234, 1.02, -0.01], requires_grad=True)
    q = quantize_8bit_ste(x)
    assert torch.equal(q, torch.round(x.detach() * 255) / 255)  # not clamped: 1.02 and -0.01 survive
    assert q[3] > 1 and q[4] < 0
    (q * torch.arange(5.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(5.0))  # straight-through


@torch.no_grad()
def test_snucv_equals_upsampler_then_quantise_then_refiner(model_dir, snucv):
    lr = _lr()
    out = snucv(lr[0], seed=3)
    u = _tiny_upsampler(model_dir)
    refiner = TSDSRRefiner.from_model_dir(model_dir)
    g = torch.Generator().manual_seed(3)  # one generator: U's routing noise, then the VAE sample
    up = u(lr, generator=g)
    expected = refiner(torch.round(up * 255) / 255, g).clamp(0, 1)[0]
    assert out.shape == (3, 48, 56)
    assert (out - expected).abs().max() < 1e-5
    # determinism and seed dependence
    assert torch.equal(snucv(lr[0], seed=3), out)
    assert (snucv(lr[0], seed=4) - out).abs().max() > 1e-3


@pytest.mark.slow
def test_snucv_forward_trains_the_upsampler_only(model_dir):
    u = _tiny_upsampler(model_dir).requires_grad_(True)
    refiner = TSDSRRefiner.from_model_dir(model_dir)
    out = snucv_forward(u, refiner, _lr(8, 8), torch.Generator().manual_seed(0))
    out.mean().backward()
    grads = [p.grad for p in u.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None and not p.requires_grad for p in refiner.parameters())


def test_tsdsr_process_size_matches_original_rule():
    assert tsdsr_process_size(339, 510) == (1352, 2040)  # 1356 floored to a multiple of 8
    assert tsdsr_process_size(100, 300) == (512, 1536)  # short side enlarged to 128, x4
    assert tsdsr_process_size(101, 150) == (512, 760)  # int(128/101*150)=190 -> 760
    assert tsdsr_process_size(130, 131) == (520, 520)  # 524 floored to a multiple of 8
    assert tsdsr_process_size(12, 14, process_size=64) == (64, 72)


def _pil(x: torch.Tensor, *, truncate: bool) -> Image.Image:
    """(3,H,W) in [0,1] -> 8-bit PIL image: truncated as torchvision's ToPILImage, or rounded."""
    scaled = x.clamp(0, 1).permute(1, 2, 0).numpy() * 255
    return Image.fromarray((np.floor(scaled) if truncate else np.round(scaled)).astype(np.uint8))


def _tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]


@torch.no_grad()
@pytest.mark.parametrize("color_fix", ["wavelet", "adain", "none"])
def test_tsdsr_equals_the_official_8bit_steps(model_dir, color_fix):
    """bicubic to the working size, M, ToPILImage, Image.resize back to 4x, colour fix on ToTensor'd PIL
    images, ToPILImage again: each step done here with Pillow and numpy."""
    pipe = Pipeline.from_model_dir(model_dir, pipeline="tsdsr", device="cpu", process_size=64, latent_tile=8,
                                   latent_overlap=2, color_fix=color_fix)
    assert pipe.color_fix == color_fix and pipe.upsampler is None
    lr = torch.round(_lr(13, 15, seed=1) * 255) / 255  # an 8-bit image, as TSD-SR reads
    out = pipe(lr[0], seed=2)
    refiner = TSDSRRefiner.from_model_dir(model_dir, config=RefinerConfig(latent_tile=8, latent_overlap=2,
                                                                          clamp_input=True))
    nh, nw = tsdsr_process_size(13, 15, process_size=64)
    assert (nh, nw) == (64, 72)
    x = F.interpolate(lr, size=(nh, nw), mode="bicubic", align_corners=False)
    y = refiner(x, torch.Generator().manual_seed(2))
    result = _tensor(_pil(y[0], truncate=True).resize((60, 52), Image.Resampling.BICUBIC))
    if color_fix == "wavelet":
        reference = _tensor(_pil(lr[0], truncate=False).resize((60, 52), Image.Resampling.BICUBIC))
        result = (wavelet_split(result)[0] + wavelet_split(reference)[1]).clamp(0, 1)
    elif color_fix == "adain":
        mean, std = result.mean((2, 3), keepdim=True), (result.var((2, 3), keepdim=True) + 1e-5).sqrt()
        lr_mean, lr_std = lr.mean((2, 3), keepdim=True), (lr.var((2, 3), keepdim=True) + 1e-5).sqrt()
        result = ((result - mean) / std * lr_std + lr_mean).clamp(0, 1)
    expected = _tensor(_pil(result[0], truncate=True))[0]
    assert out.shape == (3, 52, 60)
    assert torch.equal(torch.round(out * 255), torch.round(expected * 255))


def test_pil_bicubic_is_pillow_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    x = torch.round(torch.rand(2, 3, 11, 17, generator=g) * 255) / 255
    for size in ((44, 68), (7, 9), (30, 20)):  # up, down, mixed
        ours = pil_bicubic(x, size)
        for i in range(2):
            ref = _tensor(_pil(x[i], truncate=False).resize((size[1], size[0]), Image.Resampling.BICUBIC))
            assert torch.equal(ours[i:i + 1], ref)
    # torch's antialiased bicubic has Pillow's kernel but no 8-bit rounding between passes
    assert (upsample_like_pil(x, (44, 68)) - pil_bicubic(x, (44, 68))).abs().max() > 0.5 / 255


@torch.no_grad()
def test_latent_mean_makes_tsdsr_independent_of_the_seed(model_dir):
    pipe = Pipeline.from_model_dir(model_dir, pipeline="tsdsr", latent="mean", color_fix="adain", device="cpu",
                                   process_size=32)
    lr = _lr(8, 8, seed=5)[0]
    assert torch.equal(pipe(lr, seed=1), pipe(lr, seed=2))


def test_missing_files_reported_once(model_dir, tmp_path):
    d = tmp_path / "partial"
    shutil.copytree(model_dir, d)
    (d / "mamba_trained.pth").unlink()
    (d / "vae.safetensors").unlink()
    shutil.rmtree(d / "transformer")
    with pytest.raises(ModelFolderError) as err:
        Pipeline.from_model_dir(d, device="cpu")
    msg = str(err.value)
    assert "missing 4 file(s)" in msg
    for part in ("mamba_trained.pth", "vae.safetensors", "transformer/config.json", "transformer/diffusion_pytorch"):
        assert part in msg
    # tsdsr does not need the upsampler checkpoint
    with pytest.raises(ModelFolderError, match=r"missing 3 file\(s\)"):
        Pipeline.from_model_dir(d, pipeline="tsdsr", device="cpu")
    with pytest.raises(ValueError, match="pipeline"):
        Pipeline.from_model_dir(model_dir, pipeline="bogus")


@pytest.mark.slow
def test_cli_upscale_snucv_end_to_end(model_dir, tmp_path):
    import numpy as np
    from PIL import Image

    from sr4.cli import main

    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((12, 14, 3)) * 255).astype(np.uint8)).save(src)
    out_dir = tmp_path / "out"
    rc = main(["upscale", str(src), "-o", str(out_dir), "--pipeline", "snucv", "--model-dir", str(model_dir),
               "--device", "cpu"])
    assert rc == 0
    with Image.open(out_dir / "in.png") as im:
        assert im.size == (56, 48) and im.mode == "RGB"
    rc = main(["upscale", str(src), "-o", str(tmp_path / "bad"), "--pipeline", "snucv", "--model-dir",
               str(tmp_path / "nowhere"), "--device", "cpu"])
    assert rc == 2



def test_cli_refiner_options_reach_the_pipeline(model_dir, tmp_path):
    """--merge-lora keeps the output (fp tolerance); --tile / --tile-overlap size the upsampler tiles."""
    import numpy as np
    from PIL import Image

    from sr4.cli import main

    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(1).random((20, 18, 3)) * 255).astype(np.uint8)).save(src)

    def run(name, *extra):
        assert main(["upscale", str(src), "-o", str(tmp_path / name), "--pipeline", "snucv", "--model-dir",
                     str(model_dir), "--device", "cpu", "--latent", "mean", *extra]) == 0
        return np.asarray(Image.open(tmp_path / name / "in.png"), dtype=np.int16)

    plain = run("plain")
    assert np.abs(run("merged", "--merge-lora") - plain).max() <= 1
    expected = Pipeline.from_model_dir(model_dir, device="cpu", latent="mean", upsampler_tile=8,
                                       upsampler_tile_overlap=2)(Image.open(src))
    assert np.array_equal(run("tiled", "--tile", "8", "--tile-overlap", "2"), np.asarray(expected, dtype=np.int16))

@torch.no_grad()
@pytest.mark.parametrize("stats", ["fast", "exact"])
def test_snucv_with_all_tiling_on_odd_sizes(model_dir, snucv, stats):
    """U, latent and VAE tiles together on a 52x60 output (sides not multiples of 8 or 16)."""
    tiled = Pipeline.from_model_dir(model_dir, device="cpu", upsampler_tile=8, upsampler_tile_overlap=2,
                                    latent_tile=4, latent_overlap=1, vae_tiling=True, vae_encoder_tile=24,
                                    vae_encoder_halo=8, vae_decoder_tile=3, vae_decoder_halo=1, vae_tile_stats=stats)
    lr = _lr(13, 15, seed=6)[0]
    out = tiled(lr, seed=0)
    assert out.shape == (3, 52, 60) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert (out - snucv(lr, seed=0)).abs().max() > 0  # the tiled paths really ran
