"""Regenerates this folder's CLIP-IQA reference data with the real pyiqa (run outside sr4's environment).

    /work/scratch/pyiqa-venv/bin/python tests/data/metrics/clipiqa/make_reference.py

Needs pyiqa 0.1.13 (with its `clip` dependency), torch and scikit-image. Writes:
- four PNG crops of scikit-image's astronaut / coffee / chelsea photographs;
- RN50_small.pt.xz: a TorchScript archive made the way OpenAI's RN50.pt is (a traced CLIP
  module, fp16 conv/linear/attention weights, plus the input_resolution / context_length /
  vocab_size entries the real file carries), of a SMALL ModifiedResNet CLIP (width 4, blocks
  1-2-1-1, embedding 32; text width 64, 2 layers, 1 head) with seeded random weights. The token
  table keeps CLIP's 49408 rows so clip.tokenize's ids are valid; only the rows the prompts use
  are non-zero, which lets xz shrink the file (unused rows are never read);
- reference.json: pyiqa's scores (create_metric('clipiqa', backbone=<that file>), default and with
  pos_embedding=True), its logits per prompt and clip.tokenize's ids of the prompts.
The archive is passed as pyiqa's `backbone` (a path) because pyiqa's loader would try to
re-download RN50.pt whose checksum differs from OpenAI's; everything else is pyiqa's own path.
"""

import json
import lzma
import math
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import packaging.version
import torch
from PIL import Image

# openai-clip imports pkg_resources, which current setuptools no longer ships.
sys.modules.setdefault("pkg_resources", types.SimpleNamespace(packaging=packaging))

import clip  # noqa: E402
import pyiqa  # noqa: E402
from pyiqa.archs import clip_model as pyiqa_clip  # noqa: E402
from skimage import data as skdata  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMPTS = ["Good image", "bad image", "Sharp image", "blurry image", "sharp edges", "blurry edges",
           "High resolution image", "low resolution image", "Noise-free image", "noisy image"]


def make_images() -> dict[str, np.ndarray]:
    astro = skdata.astronaut()
    images = {
        "astronaut_224x224.png": np.asarray(Image.fromarray(astro).resize((224, 224), Image.BICUBIC)),
        "astronaut_75x53.png": astro[40:93, 180:255],
        "coffee_96x64.png": skdata.coffee()[150:214, 200:296],
        "chelsea_96x64.png": skdata.chelsea()[80:144, 150:246],
    }
    for name, arr in images.items():
        Image.fromarray(np.ascontiguousarray(arr)).save(HERE / name)
    return images


def random_weights(model: torch.nn.Module, used_ids: list[int]) -> None:
    gen = torch.Generator().manual_seed(2025)

    def normal(shape, std):
        # Quarter-sigma steps (25 levels): still random, but a few bits each, so the file compresses.
        return (torch.randn(shape, generator=gen) * 4).round().clamp(-12, 12) / 4 * std

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    with torch.no_grad():
        for name, t in model.state_dict().items():
            leaf = name.rsplit(".", 1)[-1]
            if name == "logit_scale":
                t.fill_(math.log(25.0))  # RN50 has log(100); smaller keeps the pair softmaxes off saturation
            elif name == "token_embedding.weight":
                t.zero_()
                t[used_ids] = normal((len(used_ids), t.shape[1]), 0.5)
            elif t.ndim == 0:  # input_resolution / context_length / vocab_size keep their values
                continue
            elif leaf == "num_batches_tracked":
                t.fill_(0)
            elif leaf == "running_var":
                t.copy_(uniform(t.shape, 0.5, 2.0))
            elif leaf == "running_mean":
                t.copy_(normal(t.shape, 0.2))
            elif t.ndim == 1 and ("bn" in name or "downsample.1" in name or "ln_" in name):
                t.copy_(uniform(t.shape, 0.6, 1.4) if leaf == "weight" else normal(t.shape, 0.1))
            elif t.ndim == 1:  # linear / attention biases
                t.copy_(normal(t.shape, 0.05))
            elif t.ndim == 4:
                t.copy_(normal(t.shape, (2.0 / t[0].numel()) ** 0.5))
            elif "positional_embedding" in name:
                t.copy_(normal(t.shape, 0.3))
            else:  # linear weights, packed attention projections, text_projection
                t.copy_(normal(t.shape, t.shape[-1] ** -0.5 if name != "text_projection" else t.shape[0] ** -0.5))


def make_archive(tokens: torch.Tensor, out: Path) -> None:
    model = pyiqa_clip.CLIP(
        embed_dim=32, image_resolution=224, vision_layers=(1, 2, 1, 1), vision_width=4, vision_patch_size=None,
        context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2,
    )
    # The released RN50.pt lists these three in its state dict; pyiqa's build_model drops them.
    for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(model, key):
            delattr(model, key)  # plain int attributes of pyiqa's module, unused by its forward
        model.register_buffer(key, torch.tensor(value))
    random_weights(model, sorted(set(tokens.flatten().tolist()) - {0}))
    model.eval()
    # Which tensors the release stores in fp16: those pyiqa's convert_weights halves.
    probe = pyiqa_clip.CLIP(32, 224, (1, 2, 1, 1), 4, None, 77, 49408, 64, 1, 2)
    pyiqa_clip.convert_weights(probe)
    halves = {k for k, v in probe.state_dict().items() if v.dtype == torch.float16}
    traced = torch.jit.trace(model, (torch.rand(1, 3, 224, 224), tokens), check_trace=False)
    for name, p in list(traced.named_parameters()) + list(traced.named_buffers()):
        if name in halves:
            p.data = p.data.half()
    torch.jit.save(traced, str(out))


def main() -> None:
    images = make_images()
    tokens = clip.tokenize(PROMPTS)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "RN50.pt"
        make_archive(tokens, archive)
        raw = archive.read_bytes()
        (HERE / "RN50_small.pt.xz").write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        result = {"pyiqa_version": pyiqa.__version__, "torch_version": torch.__version__,
                  "prompts": PROMPTS, "clip_tokenize": tokens.tolist(), "archive_bytes": len(raw), "images": {}}
        metric = pyiqa.create_metric("clipiqa", device="cpu", backbone=str(archive))
        metric_pos = pyiqa.create_metric("clipiqa", device="cpu", backbone=str(archive), pos_embedding=True)
        net = metric.net
        for name, arr in images.items():
            x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255.0
            with torch.no_grad():
                normed = (x - net.default_mean) / net.default_std
                logits, _ = net.clip_model[0](normed, net.prompt_pairs, pos_embedding=False)
                result["images"][name] = {
                    "clipiqa": float(metric(x).flatten()[0]),
                    "clipiqa_pos_embedding": float(metric_pos(x).flatten()[0]),
                    "logits": logits[0].tolist(),
                }
    (HERE / "reference.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result["images"].items()}, indent=1))


if __name__ == "__main__":
    main()
