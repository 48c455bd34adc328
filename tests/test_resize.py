"""MATLAB-compatible imresize against reference values.

`resize_basicsr142.npz` was produced by basicsr 1.4.2's `basicsr.utils.matlab_functions.imresize`
(from its PyPI sdist, run outside this repository, float32) on a 33x27 crop of scikit-image's
astronaut (rows 100:133, cols 180:207) scaled to [0, 1]; the x4 entry uses the top-left 10x9 corner.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from sr4.image.resize import contributions, imresize

FIXTURE = Path(__file__).parent / "data" / "metrics" / "resize_basicsr142.npz"


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


@pytest.mark.parametrize(
    "name,scale,aa", [("x0.25", 0.25, True), ("x0.5", 0.5, True), ("x0.75", 0.75, True), ("x0.5_noaa", 0.5, False)]
)
def test_downscale_matches_basicsr(ref, name, scale, aa):
    x = ref["input"].astype(np.float64) / 255.0
    out = imresize(x, scale, antialiasing=aa)
    assert out.shape == ref[name].shape
    np.testing.assert_allclose(out, ref[name], atol=2e-6)


def test_upscale_matches_basicsr(ref):
    x = ref["input"][:10, :9].astype(np.float64) / 255.0
    out = imresize(x, 4)
    assert out.shape == (40, 36, 3)
    np.testing.assert_allclose(out, ref["x4"], atol=2e-6)


def test_linear_ramp_is_reproduced_away_from_borders():
    # The a=-0.5 cubic reproduces linear functions exactly; output pixel x (1-based) samples input
    # coordinate u = x / s + 0.5 * (1 - 1 / s), so a ramp 0, 1, 2, ... maps to u - 1 in the interior.
    ramp = np.arange(40, dtype=np.float64)[None, :].repeat(3, axis=0)
    for s in (4.0, 1.5, 0.5, 0.25):
        out = imresize(ramp, (1.0, s))[0]
        x = np.arange(1, out.size + 1)
        expected = x / s + 0.5 * (1 - 1 / s) - 1
        inner = slice(int(np.ceil(4 * s)) + 4, out.size - int(np.ceil(4 * s)) - 4)
        np.testing.assert_allclose(out[inner], expected[inner], atol=1e-9)


def test_torch_matches_numpy_and_is_differentiable(ref):
    x = ref["input"].astype(np.float64) / 255.0
    t = torch.from_numpy(x).permute(2, 0, 1)[None].clone().requires_grad_(True)  # (1, 3, H, W) float64
    out = imresize(t, 0.5)
    assert out.shape == (1, 3, 17, 14)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).detach().numpy(), imresize(x, 0.5), atol=1e-12)
    out.sum().backward()
    # Each output pixel's weights sum to 1 on both axes: the total gradient equals the output count.
    assert t.grad is not None
    assert t.grad.sum().item() == pytest.approx(17 * 14 * 3, rel=1e-9)
    assert imresize(t.detach().float(), 0.5).dtype == torch.float32


def test_uint8_rounds_and_saturates(ref):
    img = ref["input"]
    out = imresize(img, 0.5)
    assert out.dtype == np.uint8
    # Within one level of the float result (MATLAB rounds after each axis pass).
    assert np.abs(out.astype(np.float64) - imresize(img.astype(np.float64), 0.5)).max() <= 1.0
    # Overshoot of the cubic kernel near a hard edge saturates instead of wrapping around.
    edge = np.zeros((8, 8), dtype=np.uint8)
    edge[:, 4:] = 255
    up = imresize(edge, 2)
    assert up.min() == 0 and up.max() == 255


def test_constant_image_and_tiny_inputs_keep_values():
    # Symmetric padding is computed by index mirroring, so inputs shorter than the kernel work.
    for shape in [(1, 1), (2, 3), (3, 2)]:
        x = np.full(shape, 0.3)
        out = imresize(x, 0.25)
        assert out.shape == (1, 1)
        np.testing.assert_allclose(out, 0.3, atol=1e-12)
    np.testing.assert_allclose(imresize(np.full((5, 7, 2), 0.7), 3.0), 0.7, atol=1e-12)


def test_output_sizes_and_axis_scales():
    x = np.random.default_rng(0).random((10, 15))
    assert imresize(x, 0.3).shape == (3, 5)  # ceil(in * scale)
    assert imresize(x, size=(4, 9)).shape == (4, 9)
    assert imresize(x, (0.5, 2.0)).shape == (5, 30)
    # A resize along one axis only leaves the other axis untouched.
    np.testing.assert_allclose(imresize(x, (1.0, 0.5))[:, 0], imresize(x[:, :, None], (1.0, 0.5))[:, 0, 0])


def test_contributions_are_normalised_and_mirrored():
    w, idx = contributions(5, 2, 0.4)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert idx.min() >= 0 and idx.max() < 5


@pytest.mark.parametrize("kwargs", [{}, {"scale": 0.5, "size": (2, 2)}, {"scale": -1.0}, {"size": (0, 3)}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="imresize"):
        imresize(np.zeros((4, 4)), **kwargs)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="imresize"):
        imresize(np.zeros((2, 2, 2, 2)), 0.5)
    with pytest.raises(ValueError, match="imresize"):
        imresize(torch.zeros(4), 0.5)
