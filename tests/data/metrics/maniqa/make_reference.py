"""Record pyiqa 0.1.13's MANIQA on the small deterministic weights (run in a venv with pyiqa + timm).

    /path/to/pyiqa-venv/bin/python tests/data/metrics/maniqa/make_reference.py

pyiqa's MANIQA always asks timm for ``vit_base_patch8_224`` (with ImageNet weights), so
``timm.create_model`` is replaced for this run by a factory returning timm's own
``VisionTransformer`` with the same structure (224 px, 12 blocks) but width 16 and no download.
Everything else is pyiqa's code path: ``pyiqa.create_metric('maniqa', ...)`` with the small sizes
as keyword overrides, loading ``ckpt_koniq10k.pt`` from ``$TORCH_HOME/hub/pyiqa`` (a state dict
written from recipe.py over pyiqa's own key set, its buffers as pyiqa computed them).

Two small configurations (recipe.CONFIGS): "p16" (16 px patches) and "p8" (the real 8 px patches).
Also the real-size network (timm's real ViT-B/8 structure, recipe weights) on 2 crops.
Writes reference.json (scores, crop fingerprints, key/shape manifests, the real-size one included)
and buffers.npz (pyiqa's window index tables and shift masks) here.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TMP = Path(tempfile.mkdtemp(prefix="maniqa_ref_"))
os.environ["TORCH_HOME"] = str(TMP)  # read by pyiqa at import time
os.environ["HF_HUB_OFFLINE"] = "1"

import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

sys.path.insert(0, str(HERE))
import recipe  # noqa: E402

_real_create = timm.create_model
_vit_kwargs: dict = {}


def _fake_create(name, pretrained=False, **kw):
    assert name == "vit_base_patch8_224", name
    if not _vit_kwargs:  # the real structure, without the ImageNet download
        return _real_create(name, pretrained=False, **kw)
    return VisionTransformer(img_size=224, **{"patch_size": 8, **_vit_kwargs})


timm.create_model = _fake_create

import pyiqa  # noqa: E402
from pyiqa.archs.arch_util import uniform_crop  # noqa: E402
from pyiqa.archs.maniqa_arch import MANIQA  # noqa: E402


def load(name: str) -> torch.Tensor:
    a = np.asarray(Image.open(HERE / name).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def manifest(net: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in net.state_dict().items()}


def buffers_of(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net.state_dict().items() if k.endswith((".relative_position_index", ".attn_mask"))}


def first(buffers: dict[str, torch.Tensor], suffix: str) -> np.ndarray:
    return next(v for k, v in buffers.items() if k.endswith(suffix)).numpy()


def run_config(name: str, images: dict[str, torch.Tensor]) -> tuple[dict, dict[str, np.ndarray]]:
    maniqa_kw, vit_kw = recipe.CONFIGS[name]
    _vit_kwargs.clear()
    _vit_kwargs.update(vit_kw)
    buffers = buffers_of(MANIQA(pretrained=False, **maniqa_kw))
    probe_manifest = manifest(MANIQA(pretrained=False, **maniqa_kw))
    ckpt = recipe.state_dict(probe_manifest, buffers)
    folder = TMP / "hub" / "pyiqa"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "ckpt_koniq10k.pt")

    metric = pyiqa.create_metric("maniqa", device=torch.device("cpu"), **maniqa_kw)
    loaded = metric.net.state_dict()
    assert loaded.keys() == ckpt.keys() and all(torch.equal(loaded[k], v) for k, v in ckpt.items())
    scores = {}
    with torch.no_grad():
        for key, img in images.items():
            scores[key] = metric(img).flatten().tolist()
    (folder / "ckpt_koniq10k.pt").unlink()
    rec = {"manifest": probe_manifest, "scores": scores}
    arrays = {f"{name}_relative_position_index": first(buffers, "index"), f"{name}_attn_mask": first(buffers, "mask")}
    return rec, arrays


def main() -> None:
    torch.set_num_threads(2)
    out: dict = {"pyiqa": pyiqa.__version__, "timm": timm.__version__, "torch": torch.__version__}
    arrays: dict[str, np.ndarray] = {}

    # Real size: the key set the real ckpt_koniq10k.pt must hold for pyiqa's strict load, and one
    # score with recipe weights on only 2 crops (20 would take minutes on a CPU).
    _vit_kwargs.clear()
    real = MANIQA(pretrained=False, train_dataset="koniq", scale=0.8)
    out["real_manifest"] = manifest(real)
    rb = buffers_of(real)
    arrays.update(real_relative_position_index=first(rb, "index"), real_attn_mask=first(rb, "mask"))
    folder = TMP / "hub" / "pyiqa"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(recipe.state_dict(out["real_manifest"], rb), folder / "ckpt_koniq10k.pt")
    del real, rb
    a, b = load("a_232x296.png"), load("b_90x120.png")
    metric = pyiqa.create_metric("maniqa", device=torch.device("cpu"), test_sample=2)
    with torch.no_grad():
        out["real_scores"] = {"test_sample": 2, "a": metric(a).flatten().tolist()}
    del metric
    (folder / "ckpt_koniq10k.pt").unlink()

    images = {"a": a, "b": b, "a_and_flipped": torch.cat([a, a.flip(-1)])}
    out["p16"], arr = run_config("p16", images)
    arrays.update(arr)
    out["p8"], arr = run_config("p8", {"a": a})
    arrays.update(arr)

    # Crop fingerprints: pyiqa's uniform_crop on a position-coded tensor.
    crops = []
    for h, w, n in [(232, 296, 20), (90, 120, 20), (224, 224, 20), (300, 260, 5), (250, 500, 9), (230, 231, 1)]:
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        x = torch.stack([yy / h, xx / w, (yy * w + xx) / (h * w)])[None]
        y = uniform_crop(x, crop_size=224, crop_num=n)
        crops.append({"h": h, "w": w, "n": n, "shape": list(y.shape),
                      "corner": y[:, :, 0, 0].double().tolist(), "sums": y.double().sum(dim=(2, 3)).tolist()})
    out["crops"] = crops

    (HERE / "reference.json").write_text(json.dumps(out, indent=1) + "\n")
    np.savez_compressed(HERE / "buffers.npz", **arrays)
    print(json.dumps({k: out[k]["scores"] for k in ("p16", "p8")}), out["real_scores"])


if __name__ == "__main__":
    main()
