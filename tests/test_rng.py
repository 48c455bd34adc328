"""Random streams that do not depend on the upsampler's tiling (sr4.utils.rng, Upscaler)."""

from __future__ import annotations

import pytest
import torch

import sr4.networks.blocks as blocks
from sr4.pipeline.upscaler import Upscaler
from sr4.utils import rng
from sr4.utils.rng import advance_generator, philox_offset_increment


def _tiny_mamba(window: int = 8):
    from refiner_fixtures import TINY_MAMBA

    from sr4.networks.mambairv2 import MambaIRv2

    torch.manual_seed(0)
    return MambaIRv2(**{**TINY_MAMBA, "window_size": window, "depths": [2]}).eval()


def test_cpu_advance_in_chunks_leaves_the_state_of_one_draw(monkeypatch):
    monkeypatch.setattr(rng, "_CHUNK", 37)  # many uneven chunks
    whole, chunked = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.empty(1000).exponential_(generator=whole)
    torch.empty(234).exponential_(generator=whole)
    assert advance_generator(chunked, [1000, 234])
    assert torch.equal(whole.get_state(), chunked.get_state())
    # and the next draws agree
    assert torch.equal(torch.randn(5, generator=whole), torch.randn(5, generator=chunked))


def test_noise_draws_counts_what_the_forward_draws(monkeypatch):
    net = _tiny_mamba()
    drawn = []
    real = blocks.exponential_noise

    def counting(shape, dtype, device, generator):
        drawn.append(int(torch.Size(shape).numel()))
        return real(shape, dtype, device, generator)

    monkeypatch.setattr(blocks, "exponential_noise", counting)
    with torch.no_grad():
        net(torch.rand(1, 3, 13, 21), generator=torch.Generator().manual_seed(0))
    assert drawn == net.noise_draws(13, 21) == [16 * 24 * 8] * 2  # padded to the 8-px window, 8 tokens, 2 ASSMs


@torch.no_grad()
def test_tiled_upscaler_leaves_the_generator_where_one_pass_does():
    net = _tiny_mamba()
    x = torch.rand(1, 3, 20, 29)
    states = {}
    for tile in (None, 12, 16):
        gen = torch.Generator().manual_seed(4)
        Upscaler(net, tile=tile, tile_overlap=4, device="cpu", dtype="fp32").upscale_rgb(x, gen)
        states[tile] = gen.get_state()
    assert torch.equal(states[None], states[12]) and torch.equal(states[None], states[16])
    # a pass draws a lot: the state really moved
    assert not torch.equal(states[None], torch.Generator().manual_seed(4).get_state())


def test_auto_tile_is_one_pass_whenever_the_image_fits(monkeypatch):
    import sr4.pipeline.tiling as tiling

    up = Upscaler(_tiny_mamba(), tile="auto", device="cpu", dtype="fp32")
    per_pixel = tiling.bytes_per_pixel(up.model, torch.float32, 4)
    # MambaIRv2 states its memory per pixel: one pass while it fits 3/4 of free CPU memory
    free = int(per_pixel * 160 * 104 / tiling.CPU_ONE_PASS_SHARE) + 1
    monkeypatch.setattr(tiling, "free_memory_bytes", lambda device: free)
    assert up.tile_size(104, 160) is None  # fits: one pass, as the official code runs U
    assert up.tile_size(200, 160) is not None  # does not: power-of-two tiles within a quarter of free memory
    assert up.tile_size(200, 160) & (up.tile_size(200, 160) - 1) == 0
    assert up.tile_size(200, 160) ** 2 * per_pixel <= free / 4


def test_one_pass_credit_needs_a_stated_memory_figure(monkeypatch):
    import sr4.pipeline.tiling as tiling
    from sr4.models.descriptor import ArchId, ModelDescriptor

    net = _tiny_mamba()
    stated = ModelDescriptor(model=net, arch=ArchId("x", "x"), scale=4, memory_per_pixel=1000.0)
    estimated = ModelDescriptor(model=net, arch=ArchId("x", "x"), scale=4)  # no figure: estimated from layers
    cpu = torch.device("cpu")
    for descriptor in (stated, estimated):
        need = 100 * 100 * tiling.bytes_per_pixel(descriptor, torch.float32, 4)
        assert tiling.fits_untiled(descriptor, cpu, torch.float32, 4, 100, 100, free_bytes=int(4 * need))
        between = int(need / tiling.CPU_ONE_PASS_SHARE) + 1  # within 3/4 of free memory, not within a quarter
        assert tiling.fits_untiled(descriptor, cpu, torch.float32, 4, 100, 100, free_bytes=between) == (
            descriptor is stated)
        assert not tiling.fits_untiled(descriptor, cpu, torch.float32, 4, 100, 100, free_bytes=int(need))


def test_philox_increment_arithmetic():
    """ATen's launch rule: 256-thread blocks, at most SMs x (threads per SM / 256) of them, 4 values per thread and
    round (float types), 4 offset units per round. Values worked by hand for an H100-like and a small device."""
    assert philox_offset_increment(0, 132, 2048) == 0
    assert philox_offset_increment(1000, 132, 2048) == 4  # 4 blocks, one round
    # 132 SMs x 8 blocks x 256 threads x 4 values = 1,081,344 values per round
    assert philox_offset_increment(1_081_344, 132, 2048) == 4
    assert philox_offset_increment(1_081_345, 132, 2048) == 8
    assert philox_offset_increment(100_000_000, 132, 2048) == 93 * 4
    assert philox_offset_increment(100_000_000, 132, 2048, values_per_round=2) == 185 * 4
    assert philox_offset_increment(10_000, 2, 1024) == 4 * ((10_000 - 1) // (256 * 8 * 4) + 1)


@pytest.mark.optional
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the Philox offset rule of a real kernel)")
def test_cuda_advance_matches_real_draws():
    for dtype in (torch.float32, torch.float16, torch.float64):
        real, replay = (torch.Generator(device="cuda").manual_seed(1) for _ in range(2))
        sizes = [1000, 3_000_000, 123_457]
        for n in sizes:
            torch.empty(n, device="cuda", dtype=dtype).exponential_(generator=real)
        assert advance_generator(replay, sizes, dtype)
        assert real.get_offset() == replay.get_offset(), dtype
