"""Contracts every registered model and every pipeline gets for free (after spandrel's `assert_loads_correctly`
and diffusers' pipeline tester mixins): a new architecture or pipeline method is tested here as soon as it is
registered, once it has tiny test arguments below.

Models: detect/load round trip in the official file formats, the descriptor's statements (scale, minimum size,
dtypes, randomness and its draw count), seeded determinism, tiled vs one pass within a bound, rejected arguments.
Pipelines: built from their config or flat overrides alike, seeded determinism, per-call options never written into
a shared refiner, minimum size, output scale.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from spandrel_fixtures import compact_state_dict

from sr4.errors import ConfigError, MissingDependencyError
from sr4.models import REGISTRY, ModelDescriptor, NetworkArchitecture
from sr4.models.loading import load_model
from sr4.models.spandrel_net import SpandrelNet
from sr4.pipeline.upscaler import Upscaler
from sr4.utils.rng import advance_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: small constructor arguments of each registered architecture (a new one fails `test_every_architecture_is_covered`
#: until it has an entry).
TINY = {
    "MambaIRv2": dict(upscale=4, embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=8, inner_rank=4,
                      num_tokens=8, mlp_ratio=1.0, upsampler="pixelshuffle"),
    "MambaIRv2Light": dict(upscale=2, embed_dim=16, d_state=4, depths=[1, 1], num_heads=[2, 2], window_size=8,
                           inner_rank=4, num_tokens=8, mlp_ratio=1.0, upsampler="pixelshuffledirect"),
    "bicubic": dict(scale=3),
    "conv": dict(scale=2, channels=8, blocks=1),  # tests/toy_models.py
    # a foreign registry is loaded from files, not built: a Compact state dict (tests/spandrel_fixtures.py)
    "spandrel": dict(state_dict=lambda: compact_state_dict(2, num_feat=8, num_conv=2)),
}
#: tiled (16 px tiles, overlap 8, on 24x30) against one pass: (bound of the mean |difference|, of the max). On these
#: random nets MambaIRv2's routing noise and scan see a tile only, so single tokens route elsewhere: measured over
#: seeds 0-2, mean 0.006-0.015 and max up to 0.8 (no max bound); the deterministic models only differ where a tile's
#: border lacks context, inside the blended overlap (bicubic: 0, conv: max 0.003; spandrel's Compact, 6 convolutions
#: with PReLU: mean 0.0018-0.0020, max 0.039-0.045 over seeds 0-2).
TILED_BOUND = {"MambaIRv2": (0.03, None), "MambaIRv2Light": (0.03, None), "bicubic": (1e-6, 1e-5),
               "conv": (1e-3, 0.01), "spandrel": (0.006, 0.12)}


def _build(arch_id: str, seed: int = 0) -> ModelDescriptor:
    torch.manual_seed(seed)
    arch = REGISTRY.get(arch_id)
    if isinstance(arch, NetworkArchitecture) or arch.id == "bicubic":
        descriptor = arch.build(**TINY[arch_id])
    else:
        pytest.importorskip("spandrel", reason="the foreign architecture needs the spandrel extra")
        descriptor = arch.load(TINY[arch_id]["state_dict"]())
    descriptor.model.eval()
    with torch.no_grad():  # random init leaves some weights at zero; every path must matter
        for p in descriptor.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return descriptor


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a checkpoint file holds (a spandrel network sits inside sr4's wrapper as `net`)."""
    return (module.net if isinstance(module, SpandrelNet) else module).state_dict()


def _input(h: int = 11, w: int = 13, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


ARCHS = sorted(REGISTRY.ids())
FILE_ARCHS = [a.id for a in REGISTRY if a.loads_files]


def test_every_architecture_is_covered():
    assert sorted(TINY) == ARCHS, "give every registered architecture tiny arguments in TINY (and a TILED_BOUND)"
    assert sorted(TILED_BOUND) == ARCHS


@pytest.mark.parametrize("arch_id", FILE_ARCHS)
@pytest.mark.parametrize("fmt", ["safetensors", "params-pth", "params_ema-pth"])
def test_detect_and_load_round_trip(tmp_path: Path, arch_id: str, fmt: str):
    built = _build(arch_id)
    sd = _weights(built.model)
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        path = tmp_path / "w.pth"
        decoy = {k: torch.zeros_like(v) for k, v in sd.items()}
        torch.save({"params": sd} if fmt == "params-pth" else {"params": decoy, "params_ema": sd}, path)
    loaded = load_model(path)
    assert loaded.arch == built.arch and loaded.scale == built.scale
    assert loaded.label == f"the model {path}"
    own = _weights(loaded.model)
    assert own.keys() == sd.keys() and all(torch.equal(own[k], sd[k]) for k in sd)
    assert not loaded.model.training and next(loaded.model.parameters()).dtype == torch.float32
    if not isinstance(REGISTRY.get(arch_id), NetworkArchitecture):
        return  # a foreign registry's hyperparameters are its own, not constructor arguments of sr4's
    # the hyperparameters read from the file rebuild the same network
    rebuilt = REGISTRY.get(arch_id).build(**loaded.hyperparameters)
    assert {k: v.shape for k, v in rebuilt.model.state_dict().items()} == {k: v.shape for k, v in sd.items()}


@pytest.mark.parametrize("arch_id", ARCHS)
def test_descriptor_statements_hold(arch_id: str):
    d = _build(arch_id)
    assert REGISTRY.describe(d.model) is not None and REGISTRY.describe(d.model).arch == d.arch
    x = _input()
    with torch.no_grad():
        y = d(x, torch.Generator().manual_seed(3))
        again = d(x, torch.Generator().manual_seed(3))
        other = d(x, torch.Generator().manual_seed(4))
    assert y.shape == (1, d.output_channels, 11 * d.scale, 13 * d.scale)
    assert torch.equal(y, again)  # seeded determinism
    assert (not torch.equal(y, other)) == d.stochastic  # the generator matters exactly when the model says so
    assert d.purpose == ("SR" if d.scale > 1 else "Restoration")
    small = d.size_requirements.minimum
    with torch.no_grad():
        assert d(_input(small, small), torch.Generator()).shape[-1] == small * d.scale
    if small > 1:
        with pytest.raises(ValueError):
            d(_input(small - 1, small), torch.Generator())


@pytest.mark.parametrize("arch_id", ARCHS)
def test_stated_noise_draws_match_the_forward(arch_id: str):
    """A stochastic model's `noise_draws` is what one forward consumes: advancing a generator by it lands where
    the forward leaves it (what lets a tiled pass leave the stream as one pass would)."""
    d = _build(arch_id)
    h, w = 12, 9
    after_forward = torch.Generator().manual_seed(5)
    with torch.no_grad():
        d(_input(h, w), after_forward)
    counted = torch.Generator().manual_seed(5)
    draws = d.draws(h, w)
    assert draws is not None
    assert (draws != []) == d.stochastic
    assert advance_generator(counted, draws)
    assert torch.equal(counted.get_state(), after_forward.get_state())


@pytest.mark.parametrize("arch_id", ARCHS)
def test_each_declared_dtype_runs_close_to_float32(arch_id: str):
    d = _build(arch_id)
    x = _input(16, 16)
    with torch.no_grad():
        reference = d(x, torch.Generator().manual_seed(0))
    assert torch.float32 in d.supported_dtypes
    for dtype in d.supported_dtypes:
        copy = _build(arch_id)
        copy.model.load_state_dict(d.model.state_dict())
        copy.to(dtype=dtype)
        with torch.no_grad():
            y = copy(x.to(dtype), torch.Generator().manual_seed(0)).float()
        assert torch.isfinite(y).all(), dtype
        # half precision rounding, and on a random net the odd routing decision it flips
        assert (y - reference).abs().mean() < 0.01, dtype


@pytest.mark.parametrize("arch_id", ARCHS)
def test_tiled_is_close_to_one_pass_and_minimum_size_is_padded(arch_id: str):
    d = _build(arch_id)
    x = _input(24, 30)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a registered model states its draws: no "cannot replay" warning
        whole = Upscaler(d, tile=None)(x, seed=2)
        tiled = Upscaler(d, tile=16, tile_overlap=8)(x, seed=2)
    assert whole.shape == tiled.shape == (3, 24 * d.scale, 30 * d.scale)
    mean_bound, max_bound = TILED_BOUND[arch_id]
    assert (tiled - whole).abs().mean() <= mean_bound
    assert max_bound is None or (tiled - whole).abs().max() <= max_bound
    tiny = Upscaler(d, tile=None)(_input(1, 1)[0])
    assert tiny.shape == (3, d.scale, d.scale)


@pytest.mark.parametrize("arch_id", [a.id for a in REGISTRY if isinstance(a, NetworkArchitecture)])
def test_unknown_arguments_are_rejected_by_name(arch_id: str):
    arch = REGISTRY.get(arch_id)
    with pytest.raises(ConfigError, match="'not_an_argument'"):
        arch.build(**TINY[arch_id], not_an_argument=1)


def test_registry_names_and_errors():
    assert REGISTRY.get("mambairv2_light") is REGISTRY.get("MambaIRv2Light") is REGISTRY.get("MAMBAIRV2-LIGHT")
    with pytest.raises(ConfigError, match="unknown upsampler architecture 'SwinIR'; registered: .*MambaIRv2"):
        REGISTRY.get("SwinIR")
    with pytest.raises(ValueError, match="already registered"):
        REGISTRY.register(REGISTRY.get("MambaIRv2"))


def test_training_rejects_a_misspelt_model_argument(tmp_path: Path):
    from sr4.training.config import config_from_dict
    from sr4.training.trainer import Trainer

    cfg = config_from_dict({"mode": "upsampler", "exp_dir": str(tmp_path / "exp"), "device": "cpu",
                            "model": {"arch": "mambairv2_light", "kwargs": {**TINY["MambaIRv2Light"], "embed_dims": 8},
                                      "scale": 2},
                            "data": {"train": [{"path": str(tmp_path)}]}, "loss": {"lpips": 0, "clip": 0}})
    with pytest.raises(ConfigError, match="model.kwargs: .*'embed_dims' \\(did you mean 'embed_dim'\\?\\)"):
        Trainer(cfg)


# ----------------------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def model_dir() -> Path:
    pytest.importorskip("diffusers")
    from refiner_fixtures import shared_tiny_model_folder

    return shared_tiny_model_folder()


def _pipelines():
    from sr4.pipeline.two_stage import PIPELINE_CLASSES, pipeline_class

    return [pipeline_class(name) for name in PIPELINE_CLASSES]


TINY_PIPELINE = {"snucv": dict(latent_tile=8, latent_overlap=2), "tsdsr": dict(process_size=32)}


@pytest.mark.slow
def test_every_pipeline_contract(model_dir: Path):
    from sr4.pipeline.two_stage import Pipeline
    from sr4.refiner.tsdsr import TSDSRRefiner

    lr = _input(12, 10, seed=7)[0]
    shared = None
    for cls in _pipelines():
        options = TINY_PIPELINE[cls.method]
        by_overrides = Pipeline.from_model_dir(model_dir, pipeline=cls.method, device="cpu", **options)
        assert type(by_overrides) is cls and by_overrides.pipeline == cls.method
        config = dataclasses.replace(cls.config_class(), device="cpu")
        by_config = cls.from_model_dir(model_dir, config, **options)
        out = by_overrides(lr, seed=3)
        assert out.shape == (3, 12 * by_overrides.scale, 10 * by_overrides.scale)
        assert torch.equal(out, by_config(lr, seed=3))  # config and flat overrides are one thing
        assert torch.equal(out, by_overrides(lr, seed=3))  # seeded determinism
        if cls.method == "snucv":  # (TSD-SR with its sampled latent also depends on the seed)
            assert not torch.equal(out, by_overrides(lr, seed=4))
        # per-call options travel with the call: one refiner shared by both methods keeps its own config
        if shared is None:
            shared = TSDSRRefiner.from_model_dir(model_dir, config=by_overrides.refiner.config)
        before = dataclasses.asdict(shared.config)
        kwargs = {"upsampler": by_overrides.upsampler} if cls.method == "snucv" else {}
        sharing = cls(shared, config=by_overrides.config, **kwargs)
        assert torch.equal(sharing(lr, seed=3), out)
        assert dataclasses.asdict(shared.config) == before
        with pytest.raises(ValueError, match="too small"):
            by_overrides(_input(1, 1)[0])
        with pytest.raises(ConfigError, match="unknown"):
            Pipeline.from_model_dir(model_dir, pipeline=cls.method, device="cpu", not_an_option=1)


def test_pipeline_options_of_the_other_method_are_refused_unless_default(model_dir: Path):
    from sr4.pipeline.configs import SNUCVConfig, TSDSRConfig, with_options

    assert with_options(SNUCVConfig(), process_size=512, upscale=4) == SNUCVConfig()  # front ends pass all
    with pytest.raises(ConfigError, match="process_size applies to the tsdsr pipeline, not snucv"):
        with_options(SNUCVConfig(), process_size=256)
    with pytest.raises(ConfigError, match="upsampler_tile applies to the snucv pipeline, not tsdsr"):
        with_options(TSDSRConfig(), upsampler_tile=32)
    tsdsr = with_options(TSDSRConfig(), latent_tile=8, latent_overlap=2, color_fix=None)
    assert (tsdsr.refiner.latent_tile, tsdsr.refiner.latent_overlap, tsdsr.color_fix) == (8, 2, "wavelet")


def test_missing_refiner_extra_is_one_line_with_the_install_command(model_dir: Path, monkeypatch, capsys,
                                                                    tmp_path: Path):
    import sys

    from sr4.cli import main
    from sr4.pipeline.two_stage import Pipeline

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(MissingDependencyError, match=r"needs the refiner extra \(diffusers not installed\): "
                                                     r"pip install 'sr4\[refiner\]'"):
        Pipeline.from_model_dir(model_dir, device="cpu")
    src = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(src)
    assert main(["upscale", str(src), "--out", str(tmp_path / "o"), "--pipeline", "snucv", "--model-dir",
                 str(model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'sr4[refiner]'" in err[0]


# ----------------------------------------------------------------------------- one flag, one meaning


@pytest.mark.parametrize("flag", ["-o", "--output", "--out"])
def test_output_folder_flag_on_every_command(tmp_path: Path, flag: str):
    import numpy as np
    from PIL import Image

    from sr4.cli import main

    lr, hr = tmp_path / "lr", tmp_path / "hr"
    lr.mkdir()
    hr.mkdir()
    Image.fromarray(np.full((6, 7, 3), 90, np.uint8)).save(lr / "a.png")
    Image.fromarray(np.full((24, 28, 3), 90, np.uint8)).save(hr / "a.png")
    assert main(["upscale", str(lr), flag, str(tmp_path / "up"), "--model", "bicubic"]) == 0
    assert (tmp_path / "up" / "a.png").is_file()
    assert main(["eval", str(tmp_path / "up"), str(hr), flag, str(tmp_path / "ev"), "--metrics", "psnr",
                 "--no-report", "--quiet"]) == 0
    assert (tmp_path / "ev" / "metrics.csv").is_file()
