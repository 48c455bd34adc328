"""Checkpoints and models that go wrong: format sniffing, refused pickles, NaN weights, non-finite outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from sr4.checkpoints import read_state_dict
from sr4.cli import main
from sr4.errors import CheckpointError
from sr4.image.io import write_image
from sr4.networks.mambairv2 import MambaIRv2
from sr4.pipeline.base import NonFiniteOutputError
from sr4.pipeline.upscaler import Upscaler

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = dict(upscale=4, embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=8, inner_rank=4,
            num_tokens=8, mlp_ratio=1.0, upsampler="pixelshuffle")


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return MambaIRv2(**TINY).state_dict()


def _safetensors_with_header_length(path: Path, low_byte: int, high: int) -> tuple[bytes, dict]:
    """A valid safetensors file whose 8-byte header length is high * 256 + low_byte (padded metadata)."""
    sd = {"conv_first.weight": torch.arange(24, dtype=torch.float32).view(2, 3, 2, 2), "n": torch.ones(3)}
    save_file(sd, path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = {"pad": ""}
    raw = json.dumps(header, separators=(",", ":")).encode()
    header["__metadata__"]["pad"] = "x" * (high * 256 + low_byte - len(raw))
    raw = json.dumps(header, separators=(",", ":")).encode()
    out = len(raw).to_bytes(8, "little") + raw + data[8 + n:]
    path.write_bytes(out)
    return out, sd


# 0x80 then 2..5 is also how a protocol 2..5 pickle (a legacy .pth) starts.
@pytest.mark.parametrize("high", [2, 3, 5, 0x41])
def test_safetensors_whose_length_starts_with_0x80(tmp_path: Path, high: int) -> None:
    path = tmp_path / "w.safetensors"
    data, sd = _safetensors_with_header_length(path, 0x80, high)
    assert data[0] == 0x80 and data[1] == high
    loaded = read_state_dict(path)
    assert sorted(loaded) == sorted(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    for keep in (100, 8 + 0x80):  # cut inside the header
        path.write_bytes(data[:keep])
        with pytest.raises(CheckpointError, match="truncated safetensors file") as info:
            read_state_dict(path)
        assert str(info.value).startswith(str(path))


def test_cut_safetensors_is_one_line_in_info_and_named_by_upscale(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cut.safetensors"
    data, _ = _safetensors_with_header_length(path, 0x80, 2)
    path.write_bytes(data[:300])
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated safetensors" in err and str(path) in err
    img = tmp_path / "a.png"
    write_image(img, np.zeros((8, 8, 3), np.uint8))
    assert main(["upscale", str(img), "-o", str(tmp_path / "o"), "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and str(path) in err and "truncated safetensors" in err


class _Code:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("ran",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_refused_pickle_is_one_line_with_a_safe_conversion_hint(tmp_path: Path, tiny_sd: dict,
                                                               zip_format: bool) -> None:
    path = tmp_path / "code.pth"
    torch.save({"params": tiny_sd, "hook": _Code()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: refused")
    assert "pickled" in message and "safetensors" in message
    assert "weights_only=False" not in message and "weights_only" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_nan_weights_are_refused_at_load(tmp_path: Path, tiny_sd: dict, capsys: pytest.CaptureFixture[str]) -> None:
    broken = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in tiny_sd.items()}
    path = tmp_path / "nan.safetensors"
    save_file(broken, path)
    img = tmp_path / "a.png"
    write_image(img, np.full((8, 8, 3), 128, np.uint8))
    assert main(["upscale", str(img), "-o", str(tmp_path / "o"), "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "NaN or infinite" in err
    assert not (tmp_path / "o" / "a.png").exists()
    assert main(["info", str(path)]) == 1
    assert "NaN or infinite" in capsys.readouterr().err


def test_overflowing_model_is_an_error_naming_it(tmp_path: Path, tiny_sd: dict,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Finite weights whose activations overflow float32: the output would be NaN (an all-black image).
    huge = {k: (torch.full_like(v, 3e38) if k == "upsample.0.weight" else v) for k, v in tiny_sd.items()}
    path = tmp_path / "huge.pth"
    torch.save({"params": huge}, path)
    src = tmp_path / "in"
    for name in ("a.png", "b.png"):
        write_image(src / name, np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(path), "--tile", "0"]) == 1
    captured = capsys.readouterr()
    assert "0 done, 0 skipped, 2 failed" in captured.out
    assert f"the model {path} produced NaN or infinite values" in captured.err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


class _Overflows(nn.Module):
    """x4 nearest + seeded noise, computed through x * f * f, which overflows float16 (max 65504)
    where x > 0.73 for the default f = 300."""

    scale = 4
    min_size = 1

    def __init__(self, factor: float = 300.0) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor), requires_grad=False)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=generator, device=x.device).to(x.dtype)
        y = x * self.factor * self.factor / self.factor / self.factor + 0.01 * noise
        return F.interpolate(y, scale_factor=4, mode="nearest")


def test_float16_overflow_is_recomputed_in_float32_with_the_same_draws() -> None:
    image = np.full((16, 16, 3), 40, np.uint8)
    image[:8, :8] = 250  # only the first tile overflows in float16
    fp16 = Upscaler(_Overflows(), tile=8, tile_overlap=0, device="cpu", dtype="fp16", seed=5)
    fp32 = Upscaler(_Overflows(), tile=8, tile_overlap=0, device="cpu", dtype="fp32", seed=5)
    from sr4.image.io import ImageData

    result = fp16.process_image_data(ImageData(pixels=image))
    assert any("overflowed in float16" in n and "float32" in n for n in result.notes)
    expected = fp32.process_image_data(ImageData(pixels=image)).pixels
    # The overflowing tile is the float32 result exactly (same noise); the others agree to float16 precision.
    np.testing.assert_array_equal(result.pixels[:32, :32], expected[:32, :32])
    assert np.abs(result.pixels.astype(int) - expected).max() <= 1
    calm = fp16.process_image_data(ImageData(pixels=np.full((16, 16, 3), 40, np.uint8)))
    assert calm.notes == []


def test_non_finite_result_in_any_dtype_names_the_model() -> None:
    image = np.full((8, 8, 3), 200, np.uint8)
    for dtype, factor in (("fp32", 1e30), ("fp16", float("inf"))):
        up = Upscaler(_Overflows(factor), tile=None, device="cpu", dtype=dtype)
        with pytest.raises(NonFiniteOutputError, match="the model _Overflows produced NaN or infinite values"):
            up(image)


@pytest.mark.slow
def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sr4", "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before sr4 prints a line (`sr4 info | head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err
