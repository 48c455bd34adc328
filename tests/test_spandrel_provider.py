"""sr4 as a spandrel architecture provider: MambaIRv2 checkpoints through ``spandrel.ModelLoader`` after
``sr4.integrations.spandrel.install()``, as ComfyUI and chaiNNer load them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("spandrel", reason="the spandrel integration needs the spandrel extra: pip install 'sr4[spandrel]'")

from spandrel import (  # noqa: E402
    MAIN_REGISTRY,
    Architecture,
    ArchRegistry,
    ArchSupport,
    ImageModelDescriptor,
    ModelLoader,
    SizeRequirements,
    UnsupportedDtypeError,
    UnsupportedModelError,
)
from spandrel_fixtures import (  # noqa: E402
    LAYOUTS,
    REFERENCE_CONFIGS,
    comfyui_read,
    compact_state_dict,
    esrgan_state_dict,
    mambairv2_model,
    swinir_state_dict,
    write_checkpoint,
)

import sr4  # noqa: E402
from sr4.errors import CheckpointError  # noqa: E402
from sr4.integrations.spandrel import install  # noqa: E402
from sr4.models.loading import load_upsampler  # noqa: E402

OURS = ("MambaIRv2", "MambaIRv2Light")


def _arch(name: str) -> str:
    return "MambaIRv2Light" if name.startswith("light") else "MambaIRv2"


@pytest.fixture
def registry() -> ArchRegistry:
    """spandrel's main registry as it is, plus sr4's architectures, without touching the global one."""
    reg = MAIN_REGISTRY.copy()
    install(reg)
    return reg


def _without_sr4() -> ArchRegistry:
    reg = ArchRegistry()
    reg.add(*[a for a in MAIN_REGISTRY.architectures("insertion") if a.architecture.id not in OURS])
    return reg


def _sr4_forward(path, x: torch.Tensor, seed: int) -> torch.Tensor:
    """sr4's own loader and network, noise from the global generator seeded as a spandrel user would."""
    model = load_upsampler(path)
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(x).clamp(0, 1)


# ----------------------------------------------------------------------------- registration


def test_install_appends_after_every_architecture_and_is_idempotent():
    reg = _without_sr4()  # spandrel's own architectures (the global registry may have ours from another test)
    before = [a.architecture.id for a in reg.architectures("detection")]
    added = install(reg)
    assert [a.architecture.id for a in added] == list(OURS)
    assert install(reg) == []  # a second call adds nothing and raises nothing
    after = [a.architecture.id for a in reg.architectures("detection")]
    assert after == before + list(OURS)  # every other architecture is still tried first, in its order
    assert {a.architecture.name for a in added} == {"MambaIRv2", "MambaIRv2-Light"}


def test_an_architecture_of_the_same_id_already_there_is_kept():
    # e.g. a later spandrel that ships its own MambaIRv2: install() neither raises nor replaces it
    class Native(Architecture[torch.nn.Module]):
        def __init__(self) -> None:
            super().__init__(id="MambaIRv2", detect=lambda sd: False)

        def load(self, state_dict):
            raise NotImplementedError

    native = ArchSupport.from_architecture(Native())
    reg = ArchRegistry()
    reg.add(native)
    assert [a.architecture.id for a in install(reg)] == ["MambaIRv2Light"]
    assert reg.get("MambaIRv2") is native


@pytest.mark.parametrize("make, arch", [
    (lambda: esrgan_state_dict(4), "ESRGAN"), (lambda: esrgan_state_dict(2), "ESRGAN"),
    (lambda: compact_state_dict(1), "Compact"), (lambda: compact_state_dict(4), "Compact"),
    (lambda: swinir_state_dict(4), "SwinIR"), (lambda: swinir_state_dict(3), "SwinIR"),
    *[(lambda n=n: mambairv2_model(n).state_dict(), _arch(n)) for n in sorted(REFERENCE_CONFIGS)],
], ids=["esrgan4", "esrgan2", "compact1", "compact4", "swinir4", "swinir3", *sorted(REFERENCE_CONFIGS)])
def test_each_checkpoint_is_claimed_by_exactly_its_own_architecture(registry, make, arch):
    sd = make()
    claimed = [a.architecture.id for a in registry.architectures("detection") if a.detect(sd)]
    assert claimed == [arch]


def test_without_install_spandrel_does_not_know_mambairv2():
    with pytest.raises(UnsupportedModelError):
        ModelLoader(registry=_without_sr4()).load_from_state_dict(mambairv2_model("lightSR_x4").state_dict())


# ----------------------------------------------------------------------------- the six reference configurations


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_reference_configurations_load_in_every_layout(tmp_path, registry, name, layout):
    hp = REFERENCE_CONFIGS[name]
    sd = mambairv2_model(name, seed=1).state_dict()
    training = mambairv2_model(name, seed=2).state_dict()
    path = write_checkpoint(sd, tmp_path / f"m.{'safetensors' if layout == 'safetensors' else 'pth'}", layout,
                            training_sd=training)

    desc = ModelLoader(registry=registry).load_from_file(path)
    assert isinstance(desc, ImageModelDescriptor)
    assert desc.architecture.id == _arch(name)
    assert desc.scale == hp["upscale"] and desc.purpose == "SR"
    assert desc.size_requirements == SizeRequirements(minimum=hp["window_size"] // 2)
    assert (desc.input_channels, desc.output_channels) == (3, 3)
    assert (desc.supports_half, desc.supports_bfloat16) == (False, True)
    assert desc.dtype == torch.float32 and not desc.model.training
    loaded = desc.model.state_dict()
    assert sorted(loaded) == sorted(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)  # EMA weights chosen

    x = torch.rand(1, 3, 18, 21, generator=torch.Generator().manual_seed(0))  # not a window multiple
    torch.manual_seed(5)
    out = desc(x)
    assert out.shape == (1, 3, 18 * hp["upscale"], 21 * hp["upscale"])
    # The same module with the same weights and the same noise: equal up to float32 rounding.
    torch.testing.assert_close(out, _sr4_forward(path, x, seed=5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["classicSR_Base_x2", "lightSR_x4"])
def test_seeding_the_global_generator_reproduces_sr4s_upscaler(tmp_path, registry, name):
    path = write_checkpoint(mambairv2_model(name).state_dict(), tmp_path / "m.safetensors", "safetensors")
    desc = ModelLoader(registry=registry).load_from_file(path)
    x = torch.rand(1, 3, 20, 17, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(11)
    first = desc(x)
    torch.manual_seed(12)
    other_seed = desc(x)
    assert (first - other_seed).abs().max() > 1e-3  # the routing noise matters, so seeding is what makes it equal
    upscaler = sr4.Upscaler(path, tile=None, seed=11, device="cpu", dtype="fp32")
    torch.testing.assert_close(first[0], upscaler(x[0]), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_reference_configurations_at_full_size(tmp_path, registry, name):
    hp = REFERENCE_CONFIGS[name]
    sd = mambairv2_model(name, small=False).state_dict()
    path = write_checkpoint(sd, tmp_path / "m.pth", "params")
    desc = ModelLoader(registry=registry).load_from_file(path)
    assert desc.architecture.id == _arch(name) and desc.scale == hp["upscale"]
    assert desc.size_requirements == SizeRequirements(minimum=hp["window_size"] // 2)
    loaded = desc.model.state_dict()
    assert sorted(loaded) == sorted(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert sum(p.numel() for p in desc.model.parameters()) == sum(
        v.numel() for k, v in sd.items() if k != "relative_position_index_SA")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    torch.testing.assert_close(desc(x), _sr4_forward(path, x, seed=3), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- ComfyUI


@pytest.mark.parametrize("name, suffix", [("lightSR_x4", ".safetensors"), ("classicSR_Base_x2", ".safetensors"),
                                          ("classicSR_Small_x4", ".pth")])
def test_comfyui_load_upscale_model_and_upscale_image(tmp_path, name, suffix):
    """ComfyUI's "Load Upscale Model" and "Upscale Image (using Model)" nodes (comfy_extras/nodes_upscale_model.py):
    the state dict from comfy.utils.load_torch_file goes to ModelLoader().load_from_state_dict (main registry, here
    after a custom node called install()), the descriptor is set to eval, and the IMAGE batch (B, H, W, C) is moved
    to channels-first; images up to the 512 px tile are upscaled whole, one call per batch item, clamped to [0, 1]."""
    sd = mambairv2_model(name).state_dict()
    path = write_checkpoint(sd, tmp_path / f"model{suffix}", "safetensors" if suffix == ".safetensors" else "params")
    install()  # what the custom node's __init__.py does when ComfyUI starts

    state = comfyui_read(path)
    model = ModelLoader().load_from_state_dict(state).eval()
    assert isinstance(model, ImageModelDescriptor) and model.architecture.id == _arch(name)

    image = torch.rand(2, 24, 20, 3, generator=torch.Generator().manual_seed(0))  # ComfyUI IMAGE: B, H, W, C
    model.to("cpu")
    planes = image.movedim(-1, -3)
    torch.manual_seed(42)  # how a workflow makes the routing noise reproducible
    with torch.inference_mode():
        out = torch.cat([model(planes[b:b + 1]) for b in range(planes.shape[0])])
    result = torch.clamp(out.movedim(-3, -1), min=0, max=1.0)
    scale = REFERENCE_CONFIGS[name]["upscale"]
    assert result.shape == (2, 24 * scale, 20 * scale, 3)

    sr4_model = load_upsampler(path)
    torch.manual_seed(42)
    with torch.no_grad():
        expected = torch.cat([sr4_model(planes[b:b + 1]).clamp(0, 1) for b in range(2)]).movedim(-3, -1)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- descriptor details


def test_state_dict_stays_the_callers_and_half_precision_files_load_as_float32(registry):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in mambairv2_model("lightSR_x2").state_dict().items()}
    snapshot = {k: v.clone() for k, v in sd.items()}
    first = ModelLoader(registry=registry).load_from_state_dict(sd)
    second = ModelLoader(registry=registry).load_from_state_dict(sd)
    assert first.dtype == torch.float32
    with torch.no_grad():
        next(first.model.parameters()).add_(1.0)  # weights are not shared with the state dict nor between loads
    assert all(torch.equal(sd[k], snapshot[k]) for k in sd)
    assert torch.equal(second.model.state_dict()["conv_first.weight"], snapshot["conv_first.weight"].float())


def test_dtypes_offered(registry):
    desc = ModelLoader(registry=registry).load_from_state_dict(mambairv2_model("lightSR_x4").state_dict())
    with pytest.raises(UnsupportedDtypeError):
        desc.half()
    desc.bfloat16()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).bfloat16()
    out = desc(x)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 64, 64) and bool(torch.isfinite(out).all())


def test_bfloat16_stays_close_to_float32_with_trained_weights(registry):
    """The bundled default model (trained weights) in bfloat16 on the CPU: 60.0 dB PSNR from float32 on this 96 px
    photo when measured (torch 2.14.1); random weights say nothing about precision, trained ones do."""
    from PIL import Image

    from sr4.models.bundled import DEFAULT_MODEL

    pixels = np.asarray(Image.open(Path(__file__).parent / "data" / "default_model" / "picosdeeuropa_912_912.png")
                        .convert("RGB"))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
    outs = []
    for dtype in (torch.float32, torch.bfloat16):
        desc = ModelLoader(registry=registry).load_from_file(DEFAULT_MODEL.path).to(dtype)
        torch.manual_seed(0)
        outs.append(desc(x.to(dtype)).float())
    mse = float(((outs[0] - outs[1]) ** 2).mean())
    assert 10 * np.log10(1 / mse) > 45, 10 * np.log10(1 / mse)


def test_below_the_minimum_size_spandrel_pads_and_crops(registry):
    desc = ModelLoader(registry=registry).load_from_state_dict(mambairv2_model("classicSR_Base_x2").state_dict())
    out = desc(torch.rand(1, 3, 5, 11))  # window 16 needs 8 px: spandrel pads to 8 x 11 and crops the output
    assert out.shape == (1, 3, 10, 22) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("cls_name, head, scale", [
    ("MambaIRv2", "pixelshuffle", 3), ("MambaIRv2", "nearest+conv", 4), ("MambaIRv2", "pixelshuffledirect", 2),
    ("MambaIRv2Light", "pixelshuffle", 3), ("MambaIRv2Light", "pixelshuffledirect", 4)])
def test_every_head_and_scale(registry, cls_name, head, scale):
    import sr4.networks

    torch.manual_seed(0)
    model = getattr(sr4.networks, cls_name)(embed_dim=12, d_state=4, depths=[1, 1], num_heads=[2, 2], window_size=8,
                                            inner_rank=4, num_tokens=8, upsampler=head, upscale=scale).eval()
    desc = ModelLoader(registry=registry).load_from_state_dict(model.state_dict())
    assert (desc.architecture.id, desc.scale, desc.purpose) == (cls_name, scale, "SR")
    x = torch.rand(1, 3, 10, 13, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    out = desc(x)
    torch.manual_seed(1)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x).clamp(0, 1), rtol=0, atol=1e-6)


def test_same_size_head_is_a_restoration_model(registry):
    from sr4.networks import MambaIRv2

    torch.manual_seed(0)
    model = MambaIRv2(embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=8, inner_rank=4, num_tokens=8,
                      upsampler="", upscale=1, in_chans=1)
    desc = ModelLoader(registry=registry).load_from_state_dict(model.state_dict())
    assert (desc.scale, desc.purpose, desc.input_channels) == (1, "Restoration", 1)
    assert desc(torch.rand(1, 1, 9, 10)).shape == (1, 1, 9, 10)


def test_a_damaged_mambairv2_state_dict_gets_sr4s_error(registry):
    sd = mambairv2_model("lightSR_x4").state_dict()
    sd["conv_after_body.weight"] = sd["conv_after_body.weight"][:, :5]
    with pytest.raises(CheckpointError, match="conv_after_body.weight"):
        ModelLoader(registry=registry).load_from_state_dict(sd)


# ----------------------------------------------------------------------------- the .pth hook (chaiNNer)


@pytest.mark.slow  # a fresh interpreter imports torch, torchvision and spandrel
def test_pth_hook_registers_on_import_of_spandrel_without_importing_torch_first(tmp_path):
    from sr4.integrations import spandrel_hook

    assert spandrel_hook.PTH_LINE in spandrel_hook.__doc__  # the documented line is the tested one
    (tmp_path / "sr4-spandrel.pth").write_text(spandrel_hook.PTH_LINE + "\n")
    code = ("import site, sys; site.addsitedir(sys.argv[1]); print('torch' in sys.modules); import spandrel; "
            "print(*[a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures('detection')][-2:])")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["False", "MambaIRv2 MambaIRv2Light"]


def test_activate_after_spandrel_was_imported_installs_at_once(monkeypatch):
    import sr4.integrations.spandrel as provider
    from sr4.integrations import spandrel_hook

    calls = []
    monkeypatch.setattr(provider, "install", lambda: calls.append(1))
    spandrel_hook.activate()  # spandrel is imported in this process: installs now, leaves no import hook behind
    assert calls == [1]
    assert not any(isinstance(f, spandrel_hook._Finder) for f in sys.meta_path)
