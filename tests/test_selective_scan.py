"""Selective scan: the reference against a per-element loop, every fast backend against the reference."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import threading
import warnings

import pytest
import torch

from sr4.networks.scan import BACKEND_TABLE, available_backends, selective_scan, selective_scan_reference
from sr4.networks.scan import mamba as scan_cuda
from sr4.networks.scan import numba_backend as scan_numba
from sr4.networks.scan.chunked import selective_scan_chunked

FAST_BACKENDS = [name for name in available_backends("cpu") if name != "reference"]
if torch.cuda.is_available():
    FAST_BACKENDS += [f"cuda:{name}" for name in available_backends("cuda") if name != "reference"]


def make_inputs(batch=2, dim=6, nstate=4, length=9, groups=1, dtype=torch.float32, seed=0,
                with_d=True, with_bias=True, delta_scale=1.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    tensors = {
        "u": rand(batch, dim, length),
        "delta": rand(batch, dim, length) * delta_scale,
        "A": -torch.exp(rand(dim, nstate) * 0.5),
        "B": rand(batch, groups, nstate, length),
        "C": rand(batch, groups, nstate, length),
        "D": rand(dim) if with_d else None,
        "delta_bias": rand(dim) * 0.5 if with_bias else None,
    }
    return {k: (None if v is None else v.to(device).requires_grad_()) for k, v in tensors.items()}


def naive_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """Scalar loops straight from the recurrence, in float64, for tiny sizes."""
    batch, dim, length = u.shape
    nstate, groups = A.shape[1], B.shape[1]
    y = torch.zeros(batch, dim, length, dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            g = d // (dim // groups)
            h = [0.0] * nstate
            for t in range(length):
                x = float(delta[b, d, t]) + (float(delta_bias[d]) if delta_bias is not None else 0.0)
                dt = (math.log1p(math.exp(x)) if x <= 20 else x) if delta_softplus else x
                acc = 0.0
                for n in range(nstate):
                    h[n] = math.exp(dt * float(A[d, n])) * h[n] + dt * float(B[b, g, n, t]) * float(u[b, d, t])
                    acc += h[n] * float(C[b, g, n, t])
                y[b, d, t] = acc + (float(D[d]) * float(u[b, d, t]) if D is not None else 0.0)
    return y


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("softplus", [True, False])
def test_reference_matches_scalar_loops(groups, softplus):
    x = make_inputs(batch=2, dim=6, nstate=3, length=5, groups=groups, dtype=torch.float64, delta_scale=8.0)
    with torch.no_grad():
        y = selective_scan_reference(**x, delta_softplus=softplus)
        expected = naive_scan(**x, delta_softplus=softplus)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


def test_reference_keeps_dtype_and_accepts_3d_b_c():
    x = make_inputs(groups=1)
    y4 = selective_scan_reference(**x, delta_softplus=True)
    x3 = dict(x, B=x["B"][:, 0], C=x["C"][:, 0])
    torch.testing.assert_close(selective_scan_reference(**x3, delta_softplus=True), y4, rtol=0, atol=0)
    xh = {k: (None if v is None else v.detach().to(torch.bfloat16)) for k, v in x.items()}
    yh = selective_scan_reference(**xh, delta_softplus=True)
    assert yh.dtype == torch.bfloat16


def _run(backend, x, softplus):
    if backend.startswith("cuda:"):
        x = {k: (None if v is None else v.detach().cuda().requires_grad_()) for k, v in x.items()}
        backend = backend.split(":", 1)[1]
    return x, selective_scan(**x, delta_softplus=softplus, backend=backend)


def _check_against_reference(backend, x, softplus, rtol=1e-4, atol=1e-4):
    ref_inputs = {k: (None if v is None else v.detach().clone().requires_grad_()) for k, v in x.items()}
    y_ref = selective_scan_reference(**ref_inputs, delta_softplus=softplus)
    x_fast, y = _run(backend, x, softplus)
    torch.testing.assert_close(y.cpu(), y_ref, rtol=rtol, atol=atol)
    grad_out = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1))
    y_ref.backward(grad_out)
    y.backward(grad_out.to(y.device))
    for name, tensor in x_fast.items():
        if tensor is None:
            continue
        scale = ref_inputs[name].grad.abs().max().item() + 1e-6
        torch.testing.assert_close(tensor.grad.cpu() / scale, ref_inputs[name].grad / scale, rtol=rtol, atol=atol,
                                   msg=lambda m, n=name: f"gradient of {n}: {m}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize(
    ("groups", "softplus", "with_d", "with_bias", "shape"),
    [
        (1, True, True, True, (2, 8, 16, 33)),
        (4, True, True, True, (1, 8, 5, 20)),
        (2, False, True, False, (3, 6, 7, 11)),
        (1, False, False, True, (1, 5, 3, 1)),
        (6, True, False, False, (2, 6, 4, 17)),
        (1, True, True, True, (1, 40, 16, 600)),  # large enough to run on several threads
    ],
)
def test_fast_backend_matches_reference(backend, groups, softplus, with_d, with_bias, shape):
    batch, dim, nstate, length = shape
    x = make_inputs(batch, dim, nstate, length, groups=groups, with_d=with_d, with_bias=with_bias, seed=dim + length)
    _check_against_reference(backend, x, softplus)


@pytest.mark.parametrize(("backend", "dtype"), [
    pytest.param(backend, dtype, id=f"{backend}-{dtype}") for dtype in (torch.float32, torch.float64)
    for backend in FAST_BACKENDS
    if not (backend.startswith("cuda:") and dtype == torch.float64)  # mamba_ssm's kernel has no fp64
])
def test_fast_backend_softplus_threshold_branch(backend, dtype):
    # delta + bias over [-30, 150]: both softplus branches (exp(x) overflows fp32 above ~88, so the
    # x > 20 branch must bypass it), and decays exp(dt * A) far below 1. In fp64 the tolerance is tight
    # enough to see softplus(x) - x = log1p(exp(-x)), i.e. a wrong threshold.
    x = make_inputs(2, 6, 4, 25, groups=2, seed=7, dtype=dtype)
    with torch.no_grad():
        x["delta"].copy_(torch.linspace(-30, 150, x["delta"].numel()).reshape(x["delta"].shape))
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    _check_against_reference(backend, x, True, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fast_backend_half_precision_inputs(backend):
    x = make_inputs(1, 4, 4, 12, groups=1, seed=3)
    x = {k: (None if v is None else v.detach().to(torch.bfloat16)) for k, v in x.items()}
    _, y = _run(backend, x, True)
    assert y.dtype == torch.bfloat16
    y_ref = selective_scan_reference(**x, delta_softplus=True)
    torch.testing.assert_close(y.cpu().float(), y_ref.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("groups", "softplus"), [(1, True), (2, False)])
def test_numba_gradcheck_float64(groups, softplus):
    x = make_inputs(2, 4, 3, 6, groups=groups, dtype=torch.float64, seed=11, delta_scale=0.5)
    args = tuple(x.values())

    def fn(*a):
        return scan_numba.selective_scan_numba(*a, delta_softplus=softplus)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_numba_backward_only_for_needed_inputs_and_3d_b():
    x = make_inputs(1, 4, 3, 10, groups=1)
    x3 = {k: (None if v is None else v.detach()) for k, v in x.items()}
    x3["B"] = x3["B"][:, 0].clone().requires_grad_()
    y = selective_scan(**x3, delta_softplus=True, backend="numba")
    y.sum().backward()
    assert x3["B"].grad is not None and x3["B"].grad.shape == x3["B"].shape
    ref_b = x3["B"].detach().clone().requires_grad_()
    selective_scan_reference(**dict(x3, B=ref_b), delta_softplus=True).sum().backward()
    torch.testing.assert_close(x3["B"].grad, ref_b.grad, rtol=1e-4, atol=1e-4)


def test_numba_concurrent_calls_from_threads():
    inputs = [make_inputs(1, 24, 8, 700, groups=2, seed=s) for s in range(4)]
    with torch.no_grad():
        expected = [selective_scan(**x, delta_softplus=True, backend="numba") for x in inputs]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        with torch.no_grad():
            results[i] = selective_scan(**inputs[i], delta_softplus=True, backend="numba")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        torch.testing.assert_close(results[i], expected[i], rtol=0, atol=0)


def test_auto_dispatch_on_cpu(monkeypatch):
    # numba is a dependency of sr4: 'auto' on CPU tensors is always the numba kernels, called once per scan
    x = make_inputs()
    calls = []
    numba = BACKEND_TABLE["numba"]

    def spy(args):
        calls.append(args)
        return numba.run(args)

    monkeypatch.setitem(BACKEND_TABLE, "numba", dataclasses.replace(numba, run=spy))
    with torch.no_grad():
        torch.testing.assert_close(selective_scan(**x, delta_softplus=True),
                                   selective_scan_reference(**x, delta_softplus=True), rtol=1e-4, atol=1e-5)
    assert len(calls) == 1


def test_dispatch_errors():
    x = make_inputs()
    with pytest.raises(ValueError, match="unknown backend 'triton'"):
        selective_scan(**x, backend="triton")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        selective_scan(**x, backend="cuda")
    bad = [
        (dict(delta=x["delta"][..., :-1]), "delta must have"),
        (dict(A=x["A"][:-1]), "A must have"),
        (dict(B=x["B"].expand(-1, 4, -1, -1)), "does not divide dim 6"),
        (dict(C=x["C"][..., :-1]), "C must have shape"),
        (dict(D=torch.ones(5)), "D must have shape"),
        (dict(delta_bias=torch.ones(6, 1)), "delta_bias must have shape"),
        (dict(u=x["u"][0]), "u must have shape"),
        (dict(u=x["u"].long()), "floating-point"),
    ]
    for change, message in bad:
        for backend in ["reference", *[b for b in FAST_BACKENDS if not b.startswith("cuda")]]:
            with pytest.raises(ValueError, match=message):
                selective_scan(**dict(x, **change), backend=backend)


@pytest.mark.optional  # a CUDA machine with mamba_ssm installed skips it
def test_cuda_module_without_mamba_ssm(monkeypatch):
    if scan_cuda.mamba_ssm_available():
        pytest.skip("mamba_ssm is installed here")
    assert scan_cuda.mamba_ssm_import_error()
    x = make_inputs()
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        scan_cuda.selective_scan_mamba(**x)
    scan_cuda.warn_no_mamba_ssm.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan_cuda.warn_no_mamba_ssm()
        scan_cuda.warn_no_mamba_ssm()
    assert len(caught) == 1 and "chunked PyTorch scan" in str(caught[0].message)


def test_import_compiles_nothing_and_skips_optional_packages():
    code = (
        "import sys, sr4, sr4.networks.scan, sr4.networks.scan.numba_backend, sr4.networks.scan.mamba\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
        "assert 'mamba_ssm' not in sys.modules, 'mamba_ssm imported'\n"
        "from sr4.networks.scan import numba_kernels as k\n"
        "assert not k.scan_forward.signatures and not k.scan_backward.signatures, 'compiled at import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_fast_exp_float32_accuracy_and_special_values():
    import numpy as np
    from numba import njit

    from sr4.networks.scan.numba_kernels import fast_exp

    @njit
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = fast_exp(x[i])

    x = np.concatenate([np.linspace(-100, 90, 200001), [0.0, -87.0, 88.0, -np.inf, np.inf, np.nan]]).astype(np.float32)
    out = np.empty_like(x)
    apply(x, out)
    expected = np.exp(x.astype(np.float64))
    finite = np.isfinite(x) & (expected > 1e-37) & (expected < 1e38)
    rel = np.abs(out[finite] - expected[finite]) / expected[finite]
    assert rel.max() < 4e-7  # a few fp32 ulps
    assert np.all(out[x < -87.0] < 2e-38) and np.all(out[x < -87.0] >= 0)
    assert np.isinf(out[x == np.inf]).all() and out[x == -np.inf][0] == 0.0 and np.isnan(out[-1])


@pytest.mark.parametrize("backend", ["reference", *[b for b in FAST_BACKENDS if not b.startswith("cuda")]])
def test_empty_sequence(backend):
    x = make_inputs(2, 4, 3, 0)
    y = selective_scan(**x, delta_softplus=True, backend=backend)
    assert y.shape == (2, 4, 0)
    y.sum().backward()
    assert x["A"].grad is None or torch.count_nonzero(x["A"].grad) == 0


@pytest.mark.parametrize(("chunk", "groups"), [(1, 1), (4, 2), (7, 1)])
def test_chunked_scan_carries_state_across_chunks(chunk, groups):
    x = make_inputs(2, 6, 5, 19, groups=groups, dtype=torch.float64, seed=chunk, delta_scale=3.0)
    y = selective_scan_chunked(**x, delta_softplus=True, chunk=chunk)
    ref_inputs = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    y_ref = selective_scan_reference(**ref_inputs, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    y.sum().backward()
    y_ref.sum().backward()
    for name, tensor in x.items():
        torch.testing.assert_close(tensor.grad, ref_inputs[name].grad, rtol=1e-9, atol=1e-9)


def test_numba_compiles_one_signature_per_float_width():
    from sr4.networks.scan import numba_kernels as kernels

    variants = [
        make_inputs(1, 4, 3, 7, groups=1),
        make_inputs(2, 6, 3, 5, groups=3, with_d=False, with_bias=False),
        {k: v.detach().to(torch.bfloat16).requires_grad_() for k, v in make_inputs(1, 4, 3, 7).items()},
        dict(make_inputs(1, 4, 3, 7), B=torch.randn(1, 3, 7)),  # 3-D B
        dict(make_inputs(1, 4, 3, 7), C=torch.randn(1, 1, 7, 3).transpose(2, 3)),  # non-contiguous C
    ]
    for x in variants:
        selective_scan(**x, delta_softplus=True, backend="numba").float().sum().backward()
    for kernel in (kernels.scan_forward, kernels.scan_backward):
        assert len(kernel.signatures) <= 2, kernel.signatures  # float32, and float64 if gradcheck ran
