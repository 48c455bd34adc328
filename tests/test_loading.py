import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sr4.checkpoints import read_state_dict
from sr4.errors import CheckpointError
from sr4.models.loading import UpsamplerConfig, detect_upsampler, load_upsampler
from sr4.networks.mambairv2 import MambaIRv2
from sr4.networks.mambairv2_light import MambaIRv2Light

REF = Path(__file__).parent / "data" / "mambairv2"
TINY = dict(embed_dim=12, d_state=4, depths=[1, 2], num_heads=[2, 3], window_size=8, inner_rank=4, num_tokens=8,
            mlp_ratio=2.0, upscale=4, upsampler="pixelshuffle", convffn_kernel_size=3)


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return MambaIRv2(**TINY).state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"params": sd},
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {"net": sd},
        lambda sd: {"params": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"state_dict": {"params": sd}},
    ],
    ids=["bare", "params", "state_dict", "model", "net", "module-prefix", "nested"],
)
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_formats_and_wrappers(tmp_path, tiny_sd, wrap, legacy):
    path = tmp_path / "w.pth"
    torch.save(wrap(tiny_sd), path, _use_new_zipfile_serialization=not legacy)
    assert _same(read_state_dict(path), tiny_sd)


def test_safetensors_and_extension_is_not_trusted(tmp_path, tiny_sd):
    path = tmp_path / "w.safetensors"
    save_file(tiny_sd, path)
    assert _same(read_state_dict(path), tiny_sd)
    odd = tmp_path / "w.pt"  # a safetensors file under a .pt name is still read as safetensors
    odd.write_bytes(path.read_bytes())
    assert _same(read_state_dict(odd), tiny_sd)


def test_safetensors_whose_header_length_looks_like_a_pickle(tmp_path, tiny_sd, monkeypatch):
    # A safetensors file starts with its header length (u64, little endian); when its low byte is 0x80
    # (one header size in 256) the first byte equals a pickle's PROTO opcode. It must still be read as
    # safetensors, never handed to torch.load (which reads it on recent torch, refuses it on torch 2.1).
    path = tmp_path / "m.safetensors"
    for pad in range(512):
        save_file(tiny_sd, path, metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no metadata size gave a 0x80 first byte")

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called on a safetensors file")

    monkeypatch.setattr(torch, "load", no_pickle)
    assert _same(read_state_dict(path), tiny_sd)


def test_params_ema_is_preferred_and_key_overrides(tmp_path, tiny_sd):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in tiny_sd.items()}
    path = tmp_path / "w.pth"
    torch.save({"params": tiny_sd, "params_ema": ema}, path)
    assert _same(read_state_dict(path), ema)
    assert _same(read_state_dict(path, key="params"), tiny_sd)
    with pytest.raises(CheckpointError, match="no state_dict under key 'weights'"):
        read_state_dict(path, key="weights")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # creating the file proves code ran


@pytest.mark.parametrize("how", ["zip", "legacy", "raw-pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, tiny_sd, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"params": tiny_sd, "extra": _Evil(marker)}
    if how == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=how == "zip")
    with pytest.raises(CheckpointError, match="refused") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    # the payload is real: an unrestricted unpickler would have run it
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_and_empty_files(tmp_path, tiny_sd, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"params": tiny_sd}, path)
    else:
        save_file(tiny_sd, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt|unreadable") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_state_dict(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello world, this is not a model")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_state_dict(junk)
    nothing = tmp_path / "n.pth"
    torch.save({"epoch": 3, "lr": 0.1}, nothing)
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(nothing)


def test_other_architecture_is_named(tmp_path):
    # ESRGAN (RRDBNet) layout: shares conv_first with MambaIRv2 but nothing else
    g = torch.Generator().manual_seed(0)
    sd = {"conv_first.weight": torch.randn(64, 3, 3, 3, generator=g), "conv_first.bias": torch.zeros(64)}
    for i in range(2):
        for r in range(1, 4):
            for c in range(1, 6):
                sd[f"RRDB_trunk.{i}.RDB{r}.conv{c}.weight"] = torch.randn(32, 64, 3, 3, generator=g)
    sd.update({"trunk_conv.weight": torch.randn(64, 64, 3, 3), "upconv1.weight": torch.randn(64, 64, 3, 3),
               "HRconv.weight": torch.randn(64, 64, 3, 3), "conv_last.weight": torch.randn(3, 64, 3, 3)})
    path = tmp_path / "RRDB_ESRGAN_x4.pth"
    torch.save(sd, path)
    # without spandrel: not MambaIRv2 (and the extra to install); with it: spandrel's ESRGAN, which lacks keys here
    with pytest.raises(CheckpointError, match="not a MambaIRv2 checkpoint|recognises a ESRGAN checkpoint") as info:
        load_upsampler(path)
    assert "RRDB_ESRGAN_x4.pth" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(json.loads((REF / "configs.json").read_text())))
def test_detect_every_released_configuration(name):
    hp = json.loads((REF / "configs.json").read_text())[name]["hyperparameters"]
    cls = MambaIRv2Light if name.startswith("light") else MambaIRv2
    with torch.device("meta"):
        sd = cls(**hp).state_dict()  # detection only looks at shapes
    config = detect_upsampler(sd)
    assert config.arch == cls.__name__
    expected = dict(hp)
    assert {k: config.kwargs[k] for k in expected} == expected
    assert config.scale == hp["upscale"]


@pytest.mark.parametrize(
    "extra",
    [dict(upscale=3), dict(upscale=2, upsampler="pixelshuffledirect", resi_connection="3conv", qkv_bias=False),
     dict(upsampler="nearest+conv"), dict(upsampler="", upscale=1, in_chans=1, patch_norm=False),
     dict(ape=True, img_size=32, mlp_ratio=1.5, convffn_kernel_size=5)],
)
def test_detect_and_load_roundtrip_of_other_options(tmp_path, extra):
    cfg = {**TINY, **extra}
    for cls in (MambaIRv2, MambaIRv2Light):
        torch.manual_seed(1)
        model = cls(**cfg).eval()
        path = tmp_path / "m.safetensors"
        save_file(model.state_dict(), path)
        loaded = load_upsampler(path)
        assert type(loaded) is cls and not loaded.training
        assert _same(loaded.state_dict(), model.state_dict())
        config = detect_upsampler(model.state_dict())
        for key, value in cfg.items():
            if not (cls is MambaIRv2Light and key == "convffn_kernel_size"):
                assert config.kwargs[key] == value, (cls.__name__, key)


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    del sd["layers.1.residual_group.layers.1.assm.CPE.0.bias"]
    sd["layers.0.extra.weight"] = torch.zeros(3)
    sd["layers.1.residual_group.layers.0.wqkv.weight"] = torch.zeros(30, 12)
    path = tmp_path / "broken.safetensors"
    save_file(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_upsampler(path)
    msg = str(info.value)
    assert "broken.safetensors" in msg
    assert "missing keys (1): layers.1.residual_group.layers.1.assm.CPE.0.bias" in msg
    assert "unexpected keys (1): layers.0.extra.weight" in msg
    assert "layers.1.residual_group.layers.0.wqkv.weight: checkpoint [30, 12] vs model [36, 12]" in msg


def test_load_upsampler_device_dtype_and_forward(tmp_path, tiny_sd):
    path = tmp_path / "m.pth"
    torch.save({"params": {k: v.half() if v.is_floating_point() else v for k, v in tiny_sd.items()}}, path)
    model = load_upsampler(path)
    assert next(model.parameters()).dtype == torch.float32  # fp16 file, fp32 network by default
    assert model.relative_position_index_SA.dtype == torch.int64
    model64 = load_upsampler(path, device="cpu", dtype=torch.float64)
    assert next(model64.parameters()).dtype == torch.float64
    with torch.no_grad():
        y = model64(torch.rand(1, 3, 9, 10, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    assert y.shape == (1, 3, 36, 40) and y.dtype == torch.float64


def test_config_build_rejects_unknown_arch():
    with pytest.raises(ValueError, match="unknown upsampler architecture"):
        UpsamplerConfig("SwinIR", {}).build()


def test_missing_buffer_is_reported_not_misdetected(tmp_path, tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if k != "relative_position_index_SA"}
    path = tmp_path / "nobuf.pth"
    torch.save({"params": sd}, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): relative_position_index_SA"):
        load_upsampler(path)
