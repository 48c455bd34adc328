"""Latent tiling, VAE tiling and colour fix of the refiner."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sr4.refiner.colorfix import adain_color_fix, apply_color_fix, wavelet_color_fix, wavelet_split
from sr4.refiner.tiling import (
    VAETileConfig,
    gaussian_tile_weights,
    plan_spans,
    run_latent_tiles,
    run_vae_tiled,
    tile_offsets,
)

# ----------------------------------------------------------------------------- latent tiles


def test_tile_offsets_follow_tsdsr_grid():
    assert tile_offsets(64, 64, 8) == [0]
    assert tile_offsets(40, 64, 8) == [0]
    assert tile_offsets(100, 64, 8) == [0, 36]
    assert tile_offsets(200, 64, 8) == [0, 56, 112, 136]
    assert tile_offsets(120, 64, 8) == [0, 56]  # 56 + 64 == 120: no extra tile
    with pytest.raises(ValueError, match="overlap"):
        tile_offsets(100, 8, 8)


def test_gaussian_window_formula():
    w = gaussian_tile_weights(6, 5)
    var = 0.01
    for y in range(6):
        for x in range(5):
            gy = math.exp(-((y - 3.0) ** 2) / 36 / (2 * var)) / math.sqrt(2 * math.pi * var)
            gx = math.exp(-((x - 2.0) ** 2) / 25 / (2 * var)) / math.sqrt(2 * math.pi * var)
            assert w[y, x].item() == pytest.approx(gy * gx, rel=1e-12)


def test_pointwise_function_is_reproduced_exactly_by_blending():
    z = torch.randn(1, 16, 21, 30, dtype=torch.float64)
    seen = []

    def fn(t):
        seen.append(tuple(t.shape[-2:]))
        return 2 * t + 1

    out = run_latent_tiles(fn, z, tile=8, overlap=2)
    assert torch.allclose(out, 2 * z + 1, atol=1e-12)
    assert set(seen) == {(8, 8)} and len(seen) == len(tile_offsets(21, 8, 2)) * len(tile_offsets(30, 8, 2))


def test_blending_matches_direct_weighted_average():
    torch.manual_seed(0)
    z = torch.randn(1, 2, 13, 18)

    def fn(t):  # depends on the whole tile, so the blend is visible
        return t.mean(dim=(-2, -1), keepdim=True).expand_as(t) + t.flip(-1)

    out = run_latent_tiles(fn, z, tile=6, overlap=2)
    num = torch.zeros_like(z, dtype=torch.float64)
    den = torch.zeros(13, 18, dtype=torch.float64)
    win = gaussian_tile_weights(6, 6)
    for top in tile_offsets(13, 6, 2):
        for left in tile_offsets(18, 6, 2):
            num[..., top:top + 6, left:left + 6] += fn(z[..., top:top + 6, left:left + 6]).double() * win
            den[top:top + 6, left:left + 6] += win
    assert torch.allclose(out.double(), num / den, atol=1e-5)


def test_small_latent_runs_in_one_call_and_thin_latent_tiles():
    calls = []

    def fn(t):
        calls.append(tuple(t.shape[-2:]))
        return t

    run_latent_tiles(fn, torch.zeros(1, 1, 6, 10), tile=8, overlap=2)
    assert calls == [(6, 10)]  # area 60 <= 64: one call, as TSD-SR
    calls.clear()
    run_latent_tiles(fn, torch.zeros(1, 1, 2, 30), tile=8, overlap=2, max_side=16)
    assert calls and all(c == (2, 2) for c in calls)  # side 30 > positional grid 16: tiled
    calls.clear()
    out = run_latent_tiles(fn, torch.rand(1, 1, 20, 24), tile=64, overlap=8, max_side=16)
    assert calls and all(c == (16, 16) for c in calls)  # tiles shrink to the grid, not only to the image
    assert out.shape == (1, 1, 20, 24)


# ----------------------------------------------------------------------------- VAE tiles


@pytest.fixture(scope="module")
def local_vae():
    """Tiny VAE without mid-block attention, so every output depends on a bounded neighbourhood."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL
    from refiner_fixtures import TINY_VAE

    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE, mid_block_add_attention=False).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae


def test_plan_spans_cover_and_align():
    spans = plan_spans(100, 24, 10, align=8)
    assert spans[0].core_start == 0 and spans[-1].core_stop == 100
    assert all(a.core_stop == b.core_start for a, b in zip(spans, spans[1:]))
    assert all(s.start % 8 == 0 and s.core_start % 8 == 0 for s in spans)
    assert all(s.start <= s.core_start - min(16, s.core_start) for s in spans)  # halo rounded up to 16


def test_tiles_share_groupnorm_statistics_of_the_whole_input():
    """A net with a 2-px receptive field and GroupNorms: with halo 2, tiles reproduce it exactly,
    which per-tile statistics could not (they would follow each tile's content)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU(),
                              torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.GroupNorm(2, 4)).eval()
    x = F.interpolate(torch.rand(1, 3, 10, 13), size=(40, 52), mode="bilinear")  # smooth, like photos
    x[..., :20, :] *= 4  # very different statistics in the top and bottom tiles
    with torch.no_grad():
        ref = net(x)
        tiled = run_vae_tiled(net, net, x, VAETileConfig(tile=16, halo=2, align=1, scale=1, stat_size=1000))
        assert torch.allclose(tiled, ref, atol=1e-5)
        assert not any(layer._forward_hooks for layer in net)  # hooks are removed afterwards
        per_tile = torch.cat([net(x[..., :20, :]), net(x[..., 20:, :])], dim=-2)
        assert (per_tile - ref).abs().max() > 0.1
        # statistics from a half-size copy: an approximation, close on smooth content
        approx = run_vae_tiled(net, net, x, VAETileConfig(tile=16, halo=2, align=1, scale=1, stat_size=26))
        assert 0 < (approx - ref).abs().max() < 0.1 * ref.abs().max()


def test_concurrent_tiled_calls_keep_their_own_statistics():
    """One thread is held inside its tiled run while another runs the same net to the end; each result
    equals its sequential one (statistics are per call, nothing of one call leaks into the other)."""
    import threading

    started, release = threading.Event(), threading.Event()

    class Gate(torch.nn.Module):
        def forward(self, x):
            if threading.current_thread().name == "held" and not release.is_set():
                started.set()
                release.wait(30)
            return x

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), Gate(),
                              torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.GroupNorm(2, 4)).eval()
    inputs = {"held": torch.rand(1, 3, 40, 36), "other": torch.rand(1, 3, 40, 36) * 5 - 1}
    cfg = VAETileConfig(tile=16, halo=2, align=1, scale=1, stat_size=1000)
    with torch.no_grad():
        expected = {name: run_vae_tiled(net, net, x, cfg) for name, x in inputs.items()}
    results = {}

    def work(name):
        with torch.no_grad():
            results[name] = run_vae_tiled(net, net, inputs[name], cfg)

    held = threading.Thread(target=work, args=("held",), name="held")
    held.start()
    assert started.wait(30)
    other = threading.Thread(target=work, args=("other",), name="other")
    other.start()
    other.join(60)
    release.set()
    held.join(60)
    for name in inputs:
        assert torch.equal(results[name], expected[name]), name


@torch.no_grad()
def test_vae_tiles_align_latents_exactly(local_vae):
    # Halo larger than the image: every tile sees the whole input, so this checks the latent grid
    # alignment and core cropping through the real encoder/decoder structure.
    x = torch.rand(1, 3, 40, 56) * 2 - 1
    ref = local_vae.encoder(x)
    tiled = run_vae_tiled(local_vae.encoder, local_vae.encoder, x,
                          VAETileConfig(tile=248, halo=112, align=8, scale=1 / 8, stat_size=1000))
    assert tiled.shape == ref.shape and (tiled - ref).abs().max() < 1e-4
    z = torch.randn(1, 16, 6, 9)
    ref = local_vae.decoder(z)
    tiled = run_vae_tiled(local_vae.decoder, local_vae.decoder, z,
                          VAETileConfig(tile=40, halo=18, align=1, scale=8, stat_size=1000))
    assert tiled.shape == ref.shape and (tiled - ref).abs().max() < 1e-4


def test_nonmultiple_of_eight_encoder_input_keeps_latent_grid(local_vae):
    x = torch.rand(1, 3, 36, 44) * 2 - 1
    with torch.no_grad():
        ref = local_vae.encoder(x)
        tiled = run_vae_tiled(local_vae.encoder, local_vae.encoder, x,
                              VAETileConfig(tile=240, halo=112, align=8, scale=1 / 8, stat_size=1000))
    assert tiled.shape == ref.shape == (1, 32, 4, 5)
    assert (tiled - ref).abs().max() < 1e-4


def test_vae_tiles_are_differentiable(local_vae):
    x = (torch.rand(1, 3, 32, 40) * 2 - 1).requires_grad_(True)
    out = run_vae_tiled(local_vae.encoder, local_vae.encoder, x,
                        VAETileConfig(tile=24, halo=8, align=8, scale=1 / 8, stat_size=1000))
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def _two_level_vae(attention: bool):
    """x2 VAE with one resnet per level: a receptive field small enough (about 18 px in, 13 latents
    out) to test tiles against the untiled net on small images."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, use_quant_conv=True, use_post_quant_conv=False,
                        mid_block_add_attention=attention).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae


def _photo_pair() -> torch.Tensor:
    """Two smooth images with very different statistics in their top and bottom halves."""
    torch.manual_seed(1)
    x = F.interpolate(torch.rand(2, 3, 12, 10), size=(96, 80), mode="bilinear") * 2 - 1
    x[0, :, :48] *= 0.3
    x[1, :, 48:] *= 0.2
    return x


@torch.no_grad()
@pytest.mark.usefixtures("one_torch_thread")
def test_exact_tile_statistics_reproduce_the_untiled_vae():
    """Whole-image GroupNorm statistics aggregated over tile cores: with a halo that covers the receptive
    field, a 6x5-tile encode and a 4x4-tile decode equal the untiled VAE, per sample of a batch."""
    pytest.importorskip("diffusers")
    from sr4.refiner.vae_exact import decoder_steps, encoder_steps, run_vae_tiled_exact

    vae = _two_level_vae(attention=False)
    x = _photo_pair()
    ref = vae.quant_conv(vae.encoder(x))
    enc = VAETileConfig(tile=64, halo=24, align=2, scale=1 / 2, stat_size=1000)
    out = run_vae_tiled_exact(encoder_steps(vae.encoder, vae.quant_conv), vae.encoder, x, enc)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-4 * ref.abs().max()
    z = ref[:, :4, 12:36, 10:30] * 2
    ref = vae.decoder(z)
    dec = VAETileConfig(tile=34, halo=14, align=1, scale=2, stat_size=1000)
    out = run_vae_tiled_exact(decoder_steps(vae.decoder), vae.decoder, z, dec)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-4 * ref.abs().max()
    # the fast mode's statistics come from a downscaled copy: only approximate on the same tiles
    fast = run_vae_tiled(vae.decoder, vae.decoder, z, VAETileConfig(tile=34, halo=14, align=1, scale=2, stat_size=10))
    assert (fast - ref).abs().max() > 100 * (out - ref).abs().max()
    # a halo shorter than the receptive field is what breaks exactness, not the statistics
    short = run_vae_tiled_exact(decoder_steps(vae.decoder), vae.decoder, z,
                                VAETileConfig(tile=14, halo=4, align=1, scale=2, stat_size=1000))
    assert (short - ref).abs().max() > 1e-2
    assert not any(layer._forward_hooks for layer in vae.modules())


@torch.no_grad()
@pytest.mark.usefixtures("one_torch_thread")
def test_exact_tile_statistics_with_mid_block_attention_stay_within_a_bound():
    """The mid-block attention sees one tile, not the image: bounded, not exact (stated bound 0.25 of
    max |output|; measured 0.10 encoder, 0.04 decoder)."""
    pytest.importorskip("diffusers")
    from sr4.refiner.vae_exact import decoder_steps, encoder_steps, run_vae_tiled_exact

    vae = _two_level_vae(attention=True)
    x = _photo_pair()
    ref = vae.quant_conv(vae.encoder(x))
    out = run_vae_tiled_exact(encoder_steps(vae.encoder, vae.quant_conv), vae.encoder, x,
                              VAETileConfig(tile=64, halo=24, align=2, scale=1 / 2, stat_size=1000))
    assert 0 < (out - ref).abs().max() < 0.25 * ref.abs().max()
    z = ref[:, :4, 12:36, 10:30] * 2
    ref = vae.decoder(z)
    out = run_vae_tiled_exact(decoder_steps(vae.decoder), vae.decoder, z,
                              VAETileConfig(tile=34, halo=14, align=1, scale=2, stat_size=1000))
    assert 0 < (out - ref).abs().max() < 0.25 * ref.abs().max()


def test_exact_tile_statistics_refuse_unknown_structures():
    from sr4.refiner.vae_exact import encoder_steps

    with pytest.raises(ValueError, match="diffusers Encoder, not Sequential"):
        encoder_steps(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)))


# ----------------------------------------------------------------------------- colour fix


def _naive_blur(img: torch.Tensor, d: int) -> torch.Tensor:
    """Dilated 3x3 binomial blur with replicate borders, written with explicit index clamping."""
    h, w = img.shape[-2:]
    k = [0.25, 0.5, 0.25]
    out = torch.zeros_like(img)
    for i, wy in zip((-d, 0, d), k):
        rows = torch.clamp(torch.arange(h) + i, 0, h - 1)
        for j, wx in zip((-d, 0, d), k):
            cols = torch.clamp(torch.arange(w) + j, 0, w - 1)
            out += wy * wx * img[..., rows, :][..., cols]
    return out


def test_wavelet_split_matches_naive_five_level_blur():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 40, 37, dtype=torch.float64)
    low = img
    for level in range(5):
        low = _naive_blur(low, 2 ** level)
    high, low_fast = wavelet_split(img)
    assert torch.allclose(low_fast, low, atol=1e-12)
    assert torch.allclose(high + low_fast, img, atol=1e-12)


def test_wavelet_fix_takes_low_frequencies_from_lr():
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 12, 10)
    detail = 0.05 * torch.randn(1, 3, 48, 40)
    ref_up = F.interpolate(lr, size=(48, 40), mode="bicubic", align_corners=False, antialias=True)
    sr = (ref_up * 0.5 + 0.3 + detail).clamp(0, 1)  # SR with a colour cast
    fixed = wavelet_color_fix(sr, lr)
    expected = (wavelet_split(sr)[0] + wavelet_split(ref_up)[1]).clamp(0, 1)
    assert torch.allclose(fixed, expected, atol=1e-6)
    # the cast is gone: mean colour follows the LR again
    assert (fixed.mean((-2, -1)) - lr.mean((-2, -1))).abs().max() < 0.03
    assert (sr.mean((-2, -1)) - lr.mean((-2, -1))).abs().max() > 0.05


def test_adain_matches_lr_moments_and_dispatch():
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 16, 16) * 0.5 + 0.25
    sr = torch.rand(1, 3, 64, 64) * 0.2 + 0.1
    out = adain_color_fix(sr, lr)
    assert torch.allclose(out.mean((-2, -1)), lr.mean((-2, -1)), atol=1e-4)
    assert torch.allclose(out.flatten(2).std(-1), lr.flatten(2).std(-1), atol=1e-3)
    assert apply_color_fix("none", sr, lr) is sr
    assert torch.equal(apply_color_fix("adain", sr, lr), out)
    with pytest.raises(ValueError, match="colour fix"):
        apply_color_fix("bogus", sr, lr)


# ----------------------------------------------------------------------------- official rules


def test_thin_latent_tiles_keep_the_official_overlap():
    """12 x 350 latents (area > 64 x 64): 12-latent tiles with TSD-SR's overlap 8, i.e. a stride of 4; only a
    side at or below the overlap (where TSD-SR's grid loop never ends) halves it."""
    z = torch.arange(12 * 350, dtype=torch.float32).reshape(1, 1, 12, 350)
    calls = []
    run_latent_tiles(lambda t: calls.append(tuple(t.shape[-2:])) or t, z, tile=64, overlap=8, max_side=64)
    assert set(calls) == {(12, 12)} and len(calls) == len(tile_offsets(350, 12, 8))
    assert tile_offsets(350, 12, 8)[:3] == [0, 4, 8]
    assert tile_offsets(350, 12, 8)[-1] == 338
    calls.clear()
    run_latent_tiles(lambda t: calls.append(tuple(t.shape[-2:])) or t, torch.zeros(1, 1, 8, 600), tile=64, overlap=8)
    assert set(calls) == {(8, 8)} and len(calls) == len(tile_offsets(600, 8, 4))


def test_tsdsr_vae_grid_follows_the_official_split():
    """TSD-SR's utils/vaehook.py split, worked by hand: 680 px, tile 256, padding 32 -> ceil(616/256) = 3 cores of
    ceil(616/3) = 206, enlarged to the next multiple of 32 within the tile: 224; cores start at the padding and
    the border cores reach the border."""
    from sr4.refiner.tiling import Span
    from sr4.refiner.vae_tsdsr import tsdsr_needs_tiles, tsdsr_spans

    assert tsdsr_spans(680, 256, 32) == [Span(0, 288, 0, 256), Span(224, 512, 256, 480), Span(448, 680, 480, 680)]
    # decoder: 85 latents, tile 32, padding 11 -> ceil(63/32) = 2 cores of 32 (already a multiple of 32)
    assert tsdsr_spans(85, 32, 11) == [Span(0, 54, 0, 43), Span(32, 85, 43, 85)]
    assert not tsdsr_needs_tiles(320, 100, 256, 32) and tsdsr_needs_tiles(321, 100, 256, 32)
