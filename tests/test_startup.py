"""Start-up costs stay out of the first image: no torch._dynamo when a checkpoint loads, no torch for
`sr4 --help` / `sr4 info`, and the torch-free description of the bundled model equals the full one."""

import io
import json
import os
import struct
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sr4.cli import main
from sr4.models import REGISTRY
from sr4.models.loading import UpsamplerConfig
from sr4.models.registry import build_and_load
from sr4.networks.mambairv2 import MambaIRv2
from sr4.networks.mambairv2_light import MambaIRv2Light
from sr4.utils.safetensors_header import read_safetensors_header

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _fresh_python(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_help_and_info_do_not_import_torch():
    code = ("import sys, io, contextlib\nfrom sr4.cli import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "    assert main(['info', '--json']) == 0\n"
            "print('torch' in sys.modules, 'numpy' in sys.modules, 'MambaIRv2Light' in buf.getvalue())")
    assert _fresh_python(code) == ["False", "False", "True"]


@pytest.mark.slow
def test_loading_a_checkpoint_does_not_import_dynamo():
    code = ("import sys\nfrom sr4.models.bundled import load_default_upsampler\nnet = load_default_upsampler()\n"
            "print('torch._dynamo' in sys.modules, type(net).__name__)")
    assert _fresh_python(code) == ["False", "MambaIRv2Light"]


def _info(*args: str) -> dict:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["info", "--json", *args]) == 0
    return json.loads(buf.getvalue())


def test_bundled_description_from_the_header_equals_the_full_load():
    quick = _info()
    full = _info(quick["file"])  # the same file through read_state_dict + a strict build
    assert quick.pop("bundled")["name"] == "sr4-default-light-x4"
    assert quick == full


def test_a_damaged_bundled_file_is_refused_without_loading(monkeypatch, tmp_path, capsys):
    from sr4.models import bundled as default

    bad = tmp_path / default.DEFAULT_MODEL.filename
    bad.write_bytes(Path(default.DEFAULT_MODEL.path).read_bytes()[:-10])
    monkeypatch.setattr(default, "WEIGHTS_DIR", tmp_path)
    assert main(["info"]) == 1
    assert "damaged or replaced" in capsys.readouterr().err


@pytest.mark.parametrize("net", [
    MambaIRv2Light(embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=8, inner_rank=4, num_tokens=8,
                   mlp_ratio=1.0, upscale=4, upsampler="pixelshuffledirect"),
    MambaIRv2(embed_dim=12, d_state=4, depths=[1], num_heads=[3], window_size=7, inner_rank=4, num_tokens=8,
              upscale=2, upsampler="pixelshuffle"),
])
def test_the_architectures_min_size_is_the_networks(net):
    sd = net.state_dict()
    arch = REGISTRY.detect(sd)
    kwargs = arch.hyperparameters(sd)
    assert arch.min_size_of(kwargs) == net.min_size == build_and_load(arch, kwargs, sd).min_size


def test_build_and_load_keeps_the_checkpoint_values():
    net = MambaIRv2(embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=8, inner_rank=4, num_tokens=8,
                    upscale=4, upsampler="pixelshuffle")
    sd = net.state_dict()
    arch = REGISTRY.detect(sd)
    loaded = build_and_load(arch, arch.hyperparameters(sd), sd)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    assert not any(p.is_meta for p in loaded.parameters())


# ----------------------------------------------------------------------------- safetensors header


def test_header_shapes_and_dtypes_match_safetensors(tmp_path):
    tensors = {"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.float16), "c": torch.zeros(1, 2, 2,
               dtype=torch.bfloat16), "i": torch.zeros(5, dtype=torch.int64), "s": torch.zeros(())}
    path = tmp_path / "t.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    header = read_safetensors_header(path)
    assert set(header) == set(tensors)
    for name, t in tensors.items():
        assert header[name].shape == tuple(t.shape) and header[name].numel() == t.numel()
        assert header[name].dtype == str(t.dtype).removeprefix("torch.")
        assert header[name].is_floating_point == t.is_floating_point()


def test_bad_headers_are_named(tmp_path):
    path = tmp_path / "bad.safetensors"
    cases = {b"\x01": "too short", struct.pack("<Q", 50) + b"{}": "truncated safetensors header",
             struct.pack("<Q", 2**40): "larger than the format allows",
             struct.pack("<Q", 5) + b"{nope": "malformed safetensors header",
             struct.pack("<Q", 14) + b'{"a": {"x": 1}}'[:14]: "malformed"}
    for data, message in cases.items():
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message) as exc:
            read_safetensors_header(path)
        assert "bad.safetensors" in str(exc.value)


def test_header_detection_equals_tensor_detection(tmp_path):
    from sr4.models.loading import detect_upsampler

    net = MambaIRv2Light(embed_dim=12, d_state=4, depths=[2, 1], num_heads=[2, 2], window_size=8, inner_rank=4,
                         num_tokens=8, mlp_ratio=1.0, upscale=3, upsampler="pixelshuffledirect")
    path = tmp_path / "light.safetensors"
    save_file(net.state_dict(), path)
    from_header = detect_upsampler(read_safetensors_header(path))
    assert isinstance(from_header, UpsamplerConfig)
    assert from_header == detect_upsampler(net.state_dict())
