"""The CPU fast paths of sr4's MambaIRv2 against the plain computations they replace."""

import pytest
import torch
import torch.nn.functional as F

from sr4.networks.blocks import (
    ForwardContext,
    SelectiveScanParams,
    WindowAttention,
    exponential_noise,
    relative_position_index,
    shifted_window_mask,
    window_partition,
)
from sr4.networks.mambairv2 import MambaIRv2

TINY = dict(img_size=64, embed_dim=12, d_state=4, depths=[2, 1], num_heads=[2, 3], window_size=8, inner_rank=4,
            num_tokens=8, mlp_ratio=2.0, upscale=4, upsampler="pixelshuffle")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exponential_noise_equals_exponential_and_consumes_the_generator_alike(dtype):
    shape = torch.Size([2, 300, 7])
    gen = torch.Generator()
    expected = torch.empty(shape, dtype=dtype).exponential_(generator=gen.manual_seed(5))
    after = torch.rand(3, generator=gen)
    got = exponential_noise(shape, dtype, torch.device("cpu"), gen.manual_seed(5))
    assert got.dtype == dtype and torch.equal(got, expected)
    assert torch.equal(torch.rand(3, generator=gen), after)
    # the global RNG path
    torch.manual_seed(11)
    expected = torch.empty(shape, dtype=dtype).exponential_()
    after = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(exponential_noise(shape, dtype, torch.device("cpu"), None), expected)
    assert torch.equal(torch.rand(3), after)


@pytest.mark.parametrize("shift", [0, 4])
def test_window_order_is_roll_then_window_partition_with_masked_windows_last(shift):
    b, h, w, ws = 2, 16, 24, 8
    mask = shifted_window_mask(h, w, ws)
    ctx = ForwardContext(attn_mask=mask, rpi=torch.zeros(1), generator=None, window_size=ws, size=(b, h, w))
    x = torch.randn(b * h * w, 5)
    order = ctx.window_order(shift)
    assert ctx.window_order(shift) is order  # built once per forward
    assert torch.equal(x[order.rows][order.inverse], x)
    expected = window_partition(torch.roll(x.view(b, h, w, 5), shifts=(-shift, -shift), dims=(1, 2)), ws)
    got = x[order.rows].view_as(expected)
    if shift == 0:
        assert torch.equal(got, expected) and order.mask is None
        return
    # the same windows, reordered: those without a mask first; each keeps its own mask
    nw = mask.shape[0]
    assert order.unmasked == b * 2 and order.mask.shape[0] == nw - 2  # 3 x 2 windows, the last row/column masked
    for j in range(b * nw):
        i = next(i for i in range(b * nw) if torch.equal(expected[i], got[j]))
        want = mask[i % nw]
        have = torch.zeros_like(want) if j < order.unmasked else order.mask[(j - order.unmasked) % order.mask.shape[0]]
        assert torch.equal(have, want)
        assert (want != 0).any() == (j >= order.unmasked)


@pytest.mark.parametrize("chunk_windows", [None, 5])
def test_fused_window_attention_matches_matmul_softmax(monkeypatch, chunk_windows):
    torch.manual_seed(0)
    b, h, w, ws, dim, heads = 2, 16, 24, 8, 12, 3
    attn = WindowAttention(dim, ws, heads)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(std=0.5)
    nw, n = (h // ws) * (w // ws), ws * ws
    qkv = torch.randn(b * nw, n, 3 * dim)
    mask = shifted_window_mask(h, w, ws)
    rpi = relative_position_index(ws)
    # the official order of operations, written out
    q, k, v = qkv.view(b * nw, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    bias = attn.relative_position_bias_table[rpi.reshape(-1)].view(n, n, heads).permute(2, 0, 1)
    scores = (scores + bias).view(b, nw, heads, n, n) + mask.unsqueeze(1)
    ref = (scores.view(b * nw, heads, n, n).softmax(-1) @ v).transpose(1, 2).reshape(b * nw, n, dim)
    ref = F.linear(ref, attn.proj.weight, attn.proj.bias)
    if chunk_windows:
        monkeypatch.setattr(WindowAttention, "max_attention_elements", chunk_windows * heads * n * n)
    with torch.no_grad():
        got = attn(qkv, rpi, mask, b)
        # the unmasked-windows-first layout: windows 0 and 1 of each image have no mask, 2-5 have one
        assert mask[:2].eq(0).all() and mask[2:].ne(0).flatten(1).any(1).all()
        perm = torch.tensor([0, 1, 6, 7, 2, 3, 4, 5, 8, 9, 10, 11])
        reordered = attn(qkv[perm], rpi, mask[2:], b, unmasked=4)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(reordered, ref[perm], rtol=0, atol=2e-5)


def test_inference_prompt_lookup_matches_straight_through_policy():
    model = MambaIRv2(**TINY).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        lookup = model(x, generator=torch.Generator().manual_seed(4))
    with_grad = model(x, generator=torch.Generator().manual_seed(4))  # parameters require grad: policy matmul
    assert with_grad.requires_grad
    torch.testing.assert_close(lookup, with_grad.detach(), rtol=0, atol=1e-6)


def test_scan_backend_argument_and_attribute():
    with pytest.raises(ValueError, match="scan_backend"):
        MambaIRv2(**TINY, scan_backend="fast")
    model = MambaIRv2(**TINY, scan_backend="reference").eval()
    scans = [m for m in model.modules() if isinstance(m, SelectiveScanParams)]
    assert len(scans) == 3 and {m.backend for m in scans} == {"reference"}
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = model(x, generator=torch.Generator().manual_seed(1))
        model.scan_backend = "numba"
        assert model.scan_backend == "numba" and {m.backend for m in scans} == {"numba"}
        fast = model(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="scan_backend"):
        model.scan_backend = "gpu"
