"""Writes reference.json with the real pyiqa; run with a Python that has pyiqa 0.1.13 (and torchvision).

    /work/scratch/pyiqa-venv/bin/python tests/data/metrics/musiq/make_reference.py

For each small configuration in recipe.py it builds pyiqa's MUSIQ once without weights to learn the
state-dict keys and shapes, writes the recipe's tensors under those keys with torch.save (the format
of pyiqa's musiq_koniq_ckpt-e95806b9.pth), then scores the test images through
``pyiqa.create_metric('musiq', pretrained_model_path=...)``: pyiqa's own loader, input checks,
preprocessing and network. Not imported by the tests.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyiqa
import torch
from PIL import Image
from pyiqa.archs.musiq_arch import MUSIQ as PyiqaMUSIQ
from pyiqa.data.multiscale_trans_util import get_multiscale_patches

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recipe  # noqa: E402


def load(name: str) -> torch.Tensor:
    arr = np.asarray(Image.open(HERE / name).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def shapes_of(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def tokens(net: torch.nn.Module, x: torch.Tensor) -> dict[str, list]:
    """pyiqa's token sequence for one image: per token spatial index, scale index, mask, patch sum."""
    seq = get_multiscale_patches((x - 0.5) * 2, **net.data_preprocess_opts)[0]
    return {"spatial": seq[:, -3].long().tolist(), "scale": seq[:, -2].long().tolist(),
            "mask": seq[:, -1].long().tolist(), "patch_sum": [round(v, 4) for v in seq[:, :-3].sum(1).tolist()]}


def main() -> None:
    torch.set_num_threads(2)
    out: dict = {
        "pyiqa": pyiqa.__version__,
        "torch": torch.__version__,
        "default_musiq_opts": pyiqa.default_model_configs.DEFAULT_CONFIGS["musiq"]["metric_opts"],
        # The full-size network create_metric('musiq') builds (koniq10k: one output).
        "default_shapes": shapes_of(PyiqaMUSIQ(pretrained=False)),
        "configs": {},
    }
    for name, cfg in recipe.CONFIGS.items():
        shapes = shapes_of(PyiqaMUSIQ(pretrained=False, **cfg))
        state = {k: torch.from_numpy(v) for k, v in recipe.state_dict_arrays(shapes).items()}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / recipe.WEIGHT_NAME
            torch.save(state, path)
            metric = pyiqa.create_metric("musiq", device="cpu", pretrained_model_path=str(path), **cfg)
        with torch.no_grad():
            # a file path makes pyiqa read the image itself
            single = {img: float(metric(str(HERE / img)).flatten()[0]) for img in recipe.IMAGES}
            pair = metric(torch.cat([load(p) for p in recipe.PAIR])).flatten().tolist()
        out["configs"][name] = {"opts": cfg, "shapes": shapes, "scores": single, "pair_scores": pair}
        if name == "koniq":
            out["tokens"] = {img: tokens(metric.net, load(img)) for img in recipe.IMAGES}
        print(name, single, pair)
    (HERE / "reference.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
