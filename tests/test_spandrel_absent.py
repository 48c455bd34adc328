"""sr4 without spandrel installed (simulated by blocking the import): what needs the extra says so."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_the_spandrel_integration_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # `import spandrel` now raises ImportError
    monkeypatch.delitem(sys.modules, "sr4.integrations.spandrel", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'sr4\[spandrel\]'"):
        importlib.import_module("sr4.integrations.spandrel")


def test_without_spandrel_sr4_still_loads_mambairv2_and_names_the_extra_for_other_files(monkeypatch, tmp_path, capsys):
    import torch
    from spandrel_fixtures import compact_state_dict, mambairv2_model

    import sr4
    from sr4.cli import main
    from sr4.errors import CheckpointError

    monkeypatch.setitem(sys.modules, "spandrel", None)
    mamba = tmp_path / "mamba.pth"
    torch.save({"params": mambairv2_model("lightSR_x2").state_dict()}, mamba)
    up = sr4.Upscaler(mamba, tile=None, device="cpu", dtype="fp32")
    assert up.descriptor.arch.id == "MambaIRv2Light" and up(torch.rand(3, 8, 9)).shape == (3, 16, 18)

    compact = tmp_path / "compact.pth"
    torch.save({"params": compact_state_dict(4)}, compact)
    with pytest.raises(CheckpointError, match=r"compact.pth: .*spandrel.* is not installed: "
                                              r"pip install 'sr4\[spandrel\]'"):
        sr4.Upscaler(compact)
    from PIL import Image

    Image.new("RGB", (6, 5)).save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--model", str(compact)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'sr4[spandrel]'" in err[0]
    assert main(["info", str(compact)]) == 1
    assert "pip install 'sr4[spandrel]'" in capsys.readouterr().err
