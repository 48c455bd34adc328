"""sr4.Upscaler: image types and modes, bicubic fallback, seeds, threads, tiling, real checkpoints."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import sr4
from sr4.image.io import ImageData, read_image, write_image
from sr4.pipeline.upscaler import Upscaler

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture
def bicubic() -> Upscaler:
    return Upscaler("bicubic", tile=None)  # explicit: without a model Upscaler uses the bundled network


class NoisyConv(nn.Module):
    """x4 conv net that adds generator noise, like MambaIRv2's Gumbel routing draws."""

    scale = 4
    min_size = 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 48, 3, padding=1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return F.pixel_shuffle(self.conv(x + 0.05 * noise), 4) * 0.2 + 0.5


def test_exported_from_package() -> None:
    assert sr4.Upscaler is Upscaler


def test_fallback_is_bicubic_on_tensors(bicubic: Upscaler) -> None:
    x = torch.rand(3, 10, 13)
    out = bicubic(x)
    assert out.shape == (3, 40, 52) and out.dtype == x.dtype
    torch.testing.assert_close(out, _bicubic(x[None])[0])
    batch = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    out = bicubic(batch)
    assert out.shape == (2, 3, 24, 20) and out.dtype == torch.float64
    torch.testing.assert_close(out.float(), _bicubic(batch.float()))


def test_numpy_dtypes_and_layouts(bicubic: Upscaler) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    out = bicubic(rgb)
    assert out.shape == (36, 28, 3) and out.dtype == np.uint8
    expect = _bicubic(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0].permute(1, 2, 0).numpy()
    assert np.abs(out.astype(float) - expect * 255).max() <= 0.5 + 1e-3
    out16 = bicubic(rgb.astype(np.uint16) * 257)
    assert out16.dtype == np.uint16 and np.abs(out16 / 257.0 - expect * 255).max() < 0.01
    gray = bicubic(rgb[:, :, 0].astype(np.float32) / 255)
    assert gray.shape == (36, 28) and gray.dtype == np.float32
    assert bicubic(rgb[:, :, :1]).shape == (36, 28, 1)


def test_gray_output_is_luma_of_rgb_result() -> None:
    up = Upscaler(NoisyConv(), tile=None)
    g = torch.rand(1, 8, 9)
    out = up(g)
    rgb = up(g.expand(3, 8, 9).contiguous())
    torch.testing.assert_close(out, (rgb[None] * LUMA).sum(1), atol=1e-6, rtol=0)


def test_alpha_is_bicubic_and_separate() -> None:
    up = Upscaler(NoisyConv(), tile=None)
    rgba = torch.rand(4, 8, 9)
    out = up(rgba)
    assert out.shape == (4, 32, 36)
    torch.testing.assert_close(out[3:], _bicubic(rgba[None, 3:])[0])
    torch.testing.assert_close(out[:3], up(rgba[:3]))  # the colour does not depend on alpha
    la = up(rgba[[0, 3]])
    torch.testing.assert_close(la[1:], out[3:])


@pytest.mark.parametrize("mode,out_mode", [("RGB", "RGB"), ("RGBA", "RGBA"), ("L", "L"), ("LA", "LA"),
                                           ("P", "RGB"), ("CMYK", "RGB"), ("I;16", "I;16"), ("F", "F"), ("1", "L")])
def test_pil_modes(bicubic: Upscaler, mode: str, out_mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8))
    img = (rgb.convert("L") if mode == "I;16" else rgb).convert(mode)  # Pillow 10.0 makes I;16 only from L or I
    out = bicubic(img)
    assert isinstance(out, Image.Image) and out.mode == out_mode and out.size == (20, 24)


def test_outscale(bicubic: Upscaler) -> None:
    out = bicubic(np.zeros((10, 15, 3), np.uint8), outscale=2.0)
    assert out.shape == (20, 30, 3)
    out = bicubic(torch.rand(3, 10, 15), outscale=1.5)
    assert out.shape == (3, 15, 22)  # round(22.5) -> 22 (banker's rounding in Python)


def test_seed_controls_noise() -> None:
    up = Upscaler(NoisyConv(), tile=None, seed=3)
    x = torch.rand(3, 12, 12)
    a, b = up(x), up(x)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(up(x, seed=3), a, atol=0, rtol=0)
    assert not torch.equal(up(x, seed=4), a)


def _assert_threads_match_sequential(up: Upscaler, images: list[torch.Tensor], seeds: list[int]) -> None:
    """Concurrent calls on one Upscaler (all released at once) give exactly the sequential results."""
    expected = [up(img, seed=s) for img, s in zip(images, seeds)]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(len(images))

    def work(i: int) -> None:
        barrier.wait()
        results[i] = up(images[i], seed=seeds[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, exp in enumerate(expected):
        torch.testing.assert_close(results[i], exp, atol=0, rtol=0)


def test_threads_match_sequential() -> None:
    up = Upscaler(NoisyConv(), tile=16, tile_overlap=4)
    _assert_threads_match_sequential(up, [torch.rand(3, 20 + i, 24) for i in range(4)], [0, 1, 2, 3])


def test_tiled_matches_untiled_for_local_model() -> None:
    net = NoisyConv()
    x = torch.rand(3, 50, 70)
    # The noise is drawn per tile, so compare with a noise-free twin of the same weights.
    net.forward = lambda t, generator=None: F.pixel_shuffle(net.conv(t), 4) * 0.2 + 0.5  # type: ignore[method-assign]
    full = Upscaler(net, tile=None)(x)
    tiled = Upscaler(net, tile=24, tile_overlap=8)(x)
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=0)


def test_module_without_generator_argument() -> None:
    class Plain(nn.Module):
        scale = 2

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, scale_factor=2, mode="nearest")

    up = Upscaler(Plain(), tile=None)
    out = up(torch.rand(3, 5, 5))
    assert out.shape == (3, 10, 10)


def test_bad_models() -> None:
    with pytest.raises(TypeError, match="model must be"):
        Upscaler(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale"):
        Upscaler(nn.Identity())
    with pytest.raises(TypeError, match="PIL image, numpy array or torch tensor"):
        Upscaler(NoisyConv())([1, 2, 3])  # type: ignore[arg-type]


def test_process_file_keeps_mode_bits_and_icc(tmp_path: Path, bicubic: Upscaler) -> None:
    pixels = np.random.default_rng(2).integers(0, 65536, (8, 6, 4), dtype=np.uint16)
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # an RGB profile for RGBA pixels
    write_image(tmp_path / "in.png", ImageData(pixels=pixels, icc_profile=icc))
    bicubic.process_file(tmp_path / "in.png", tmp_path / "out.png")
    out = read_image(tmp_path / "out.png")
    assert out.pixels.shape == (32, 24, 4) and out.pixels.dtype == np.uint16
    assert out.icc_profile == icc
    with pytest.raises(FileExistsError, match="out.png"):
        bicubic.process_file(tmp_path / "in.png", tmp_path / "out.png")
    bicubic.process_file(tmp_path / "in.png", tmp_path / "out.png", overwrite=True)


# ---------------------------------------------------------------------- MambaIRv2


def _tiny_mambairv2() -> nn.Module:
    from sr4.networks.mambairv2 import MambaIRv2

    torch.manual_seed(0)
    return MambaIRv2(upscale=4, embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=8, inner_rank=4,
                     num_tokens=8, mlp_ratio=1.0, upsampler="pixelshuffle").eval()


@pytest.fixture(scope="module")
def mamba_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny_mambairv2_x4.pth"
    torch.save({"params": _tiny_mambairv2().state_dict()}, path)
    return path


def test_checkpoint_path_loads_mambairv2(mamba_ckpt: Path) -> None:
    up = Upscaler(mamba_ckpt, tile=None, seed=1)
    assert type(up.model).__name__ == "MambaIRv2" and up.scale == 4
    x = torch.rand(3, 20, 24)
    out = up(x)
    assert out.shape == (3, 80, 96)
    # Same noise as the module called directly with an equally seeded generator.
    ref = _tiny_mambairv2()
    with torch.no_grad():
        direct = ref(x[None], generator=torch.Generator().manual_seed(1)).clamp(0, 1)[0]
    torch.testing.assert_close(out, direct, atol=1e-5, rtol=0)


def test_mambairv2_small_inputs_padded(mamba_ckpt: Path) -> None:
    up = Upscaler(mamba_ckpt, tile=None)
    assert up.min_size > 1
    for h, w in [(1, 1), (3, 2), (7, 7)]:
        assert up(torch.rand(3, h, w)).shape == (3, 4 * h, 4 * w)


@pytest.mark.slow
def test_mambairv2_tiled_close_to_untiled(mamba_ckpt: Path) -> None:
    x = torch.rand(3, 40, 48)
    full = Upscaler(mamba_ckpt, tile=None)(x)
    tiled = Upscaler(mamba_ckpt, tile=24, tile_overlap=8)(x)
    # MambaIRv2's state-space scan and routing noise see the whole tile, so tiling changes
    # every pixel slightly; on this small random net the change is bounded by 0.05.
    diff = (tiled - full).abs()
    assert diff.max() < 0.05, diff.max()


def test_subclass_without_progress_argument(tmp_path: Path) -> None:
    from sr4.pipeline.base import ImageProcessor

    class Minimal(ImageProcessor):
        scale = 2

        def upscale_rgb(self, x, generator):  # type: ignore[no-untyped-def,override]
            return F.interpolate(x, scale_factor=2, mode="nearest")

    calls: list[tuple[int, int]] = []
    out = Minimal()(torch.rand(3, 4, 5), progress=lambda d, n: calls.append((d, n)))
    assert out.shape == (3, 8, 10) and calls == []


@pytest.mark.slow
def test_mambairv2_threads_match_sequential(mamba_ckpt: Path) -> None:
    up = Upscaler(mamba_ckpt, tile=16, tile_overlap=4)
    _assert_threads_match_sequential(up, [torch.rand(3, 20, 24 + 4 * i) for i in range(3)], [10, 11, 12])


def test_alpha_through_network() -> None:
    net = NoisyConv()
    up = Upscaler(net, tile=None, alpha="network")
    rgba = torch.rand(4, 6, 7, generator=torch.Generator().manual_seed(0))
    out = up(rgba, seed=5)
    with torch.no_grad():  # the alpha plane as an RGB image through the network, channels averaged
        alone = net(rgba[3:].expand(3, 6, 7)[None], generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out[3], alone[0].mean(0).clamp(0, 1), atol=1e-6, rtol=0)
    assert not torch.allclose(out[3:], _bicubic(rgba[None, 3:])[0], atol=1e-2)
    with pytest.raises(ValueError, match="alpha must be"):
        Upscaler(NoisyConv(), alpha="nearest")


def test_returned_tensor_is_an_ordinary_tensor(bicubic: Upscaler) -> None:
    out = bicubic(torch.rand(3, 4, 4))
    out += 1  # would raise for an inference-mode tensor
    assert not out.requires_grad
