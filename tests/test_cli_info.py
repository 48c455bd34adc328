import json

import torch
from safetensors.torch import save_file

from sr4.cli import main
from sr4.networks.mambairv2 import MambaIRv2
from sr4.networks.mambairv2_light import MambaIRv2Light


def test_info_text_and_json(tmp_path, capsys):
    model = MambaIRv2Light(embed_dim=12, d_state=4, depths=[2, 1], num_heads=[2, 2], window_size=8, inner_rank=4,
                           num_tokens=8, mlp_ratio=1.0, upscale=3, upsampler="pixelshuffledirect")
    path = tmp_path / "light.pth"
    torch.save({"params": model.state_dict()}, path)
    expected = sum(p.numel() for p in model.parameters())

    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "architecture:  MambaIRv2Light" in out
    assert "scale:         x3" in out
    assert f"parameters:    {expected:,}" in out
    assert "depths: [2, 1]" in out and "num_heads: [2, 2]" in out and "window_size: 8" in out

    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "MambaIRv2Light" and info["scale"] == 3 and info["parameters"] == expected
    assert info["hyperparameters"]["embed_dim"] == 12 and info["min_size"] == 4


def test_info_classic_safetensors_and_errors(tmp_path, capsys):
    model = MambaIRv2(embed_dim=12, d_state=4, depths=[1], num_heads=[3], window_size=8, inner_rank=4, num_tokens=8,
                      upscale=4, upsampler="pixelshuffle")
    path = tmp_path / "classic.safetensors"
    save_file(model.state_dict(), path)
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "MambaIRv2" and info["scale"] == 4
    assert info["parameters"] == sum(p.numel() for p in model.parameters())

    bad = tmp_path / "empty.pth"
    bad.write_bytes(b"")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "empty.pth" in err and "empty" in err


def test_info_without_a_file_describes_the_bundled_model(capsys):
    from sr4.models.bundled import DEFAULT_MODEL, sha256_of

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bundled"]["sha256"] == DEFAULT_MODEL.sha256 == sha256_of(info["file"])
    assert info["arch"] == "MambaIRv2Light" and info["scale"] == 4
    assert "sr4 train configs/default_light.yaml" in info["bundled"]["recipe"]
