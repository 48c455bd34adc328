"""PSNR/SSIM against the challenge's own code (recorded values) and against scikit-image.

Fixtures: `hr_*.png` are crops of scikit-image sample photos (coffee 102x131, chelsea 96x128,
rocket 80x90 as gray); `sr_*.png` are a bicubic x4 round trip, Gaussian noise and +-6 noise.
`challenge_psnr_ssim.json` holds what the challenge's `cal_psnr_ssim` returned on them.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr4.metrics.psnr_ssim import FidelityConfig, prepare, psnr, rgb_to_y, ssim

DATA = Path(__file__).parent / "data" / "metrics"
NAMES = ["coffee", "chelsea", "rocket_gray"]


def load_pair(name):
    sr = np.asarray(Image.open(DATA / f"sr_{name}.png"))
    hr = np.asarray(Image.open(DATA / f"hr_{name}.png"))
    return sr, hr


@pytest.mark.parametrize("name", NAMES)
def test_matches_challenge_code(name):
    ref = json.loads((DATA / "challenge_psnr_ssim.json").read_text())["values"][name]
    sr, hr = load_pair(name)
    assert psnr(sr, hr) == pytest.approx(ref["psnr"], abs=1e-5)  # the challenge's PSNR is float32
    assert ssim(sr, hr) == pytest.approx(ref["ssim"], abs=1e-10)


def _y_independent(img):
    # Straight from the BT.601 definition, in float64, on the modcropped and shaved image.
    rgb = img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
    rgb = rgb.astype(np.float64)
    h, w = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
    rgb = rgb[4 : h - 4, 4 : w - 4]
    return (rgb[..., 0] * 65.481 + rgb[..., 1] * 128.553 + rgb[..., 2] * 24.966) / 255.0 + 16.0


@pytest.mark.parametrize("name", NAMES)
def test_matches_scikit_image_on_y(name):
    metrics = pytest.importorskip("skimage.metrics")
    sr, hr = load_pair(name)
    ys, yh = _y_independent(sr), _y_independent(hr)
    ref_psnr = metrics.peak_signal_noise_ratio(yh, ys, data_range=255)
    ref_ssim = metrics.structural_similarity(
        yh, ys, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert psnr(sr, hr) == pytest.approx(ref_psnr, abs=1e-4)
    assert ssim(sr, hr) == pytest.approx(ref_ssim, abs=1e-6)


def test_rgb_option_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    sr, hr = load_pair("coffee")
    cfg = FidelityConfig(channel="rgb", crop_border=0, modcrop=1)
    assert psnr(sr, hr, cfg) == pytest.approx(metrics.peak_signal_noise_ratio(hr, sr, data_range=255), abs=1e-9)
    ref = metrics.structural_similarity(
        hr.astype(np.float64), sr.astype(np.float64), data_range=255, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, channel_axis=2,
    )
    assert ssim(sr, hr, cfg) == pytest.approx(ref, abs=1e-9)
    # A different shave changes the number, so the option really applies.
    assert psnr(sr, hr, FidelityConfig(channel="rgb", crop_border=8)) != pytest.approx(psnr(sr, hr, cfg), abs=1e-6)


def test_y_channel_definition():
    px = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(px)[0], [81.481, 144.553, 40.966, 235.0, 16.0], atol=1e-4)


def test_modcrop_and_shave_shapes():
    img = np.zeros((102, 131, 3), dtype=np.uint8)
    assert prepare(img, FidelityConfig()).shape == (100 - 8, 128 - 8, 1)
    assert prepare(img, FidelityConfig(channel="rgb", modcrop=1, crop_border=0)).shape == (102, 131, 3)


def test_identical_images():
    _, hr = load_pair("chelsea")
    assert math.isinf(psnr(hr, hr))
    assert ssim(hr, hr) == pytest.approx(1.0, abs=1e-12)


def test_errors_are_clear():
    sr, hr = load_pair("coffee")
    with pytest.raises(ValueError, match="sizes differ"):
        psnr(sr[:-4], hr)
    with pytest.raises(TypeError, match="8-bit"):
        ssim(sr.astype(np.float32), hr)
    with pytest.raises(ValueError, match="empty"):
        psnr(sr[:8, :8], hr[:8, :8])
    with pytest.raises(ValueError, match="channel"):
        FidelityConfig(channel="lab")
