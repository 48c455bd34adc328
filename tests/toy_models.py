"""Small stand-ins used by tests and benchmarks: a conv upsampler and a random tiny CLIP folder.

They are real, trainable models (not mocks) so that the trainer's behaviour can be checked end
to end on a 2-core CPU in seconds. The conv upsampler is registered in sr4's model registry as
architecture "conv" (tests/conftest.py does it for the test session), so a training config can name
it; `python tests/toy_models.py ARGS...` runs the `sr4` command with it registered (for tests that
start sr4 in another process, DDP included).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sr4.models import REGISTRY, KeyCondition, NetworkArchitecture


class ConvUpsampler(nn.Module):
    """Bicubic skip + a few residual convolutions + PixelShuffle; obeys the upsampler contract."""

    def __init__(self, scale: int = 4, channels: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.min_size = 1
        self.conv_first = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(blocks))
        self.conv_up = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        nn.init.zeros_(self.conv_up.weight)
        nn.init.zeros_(self.conv_up.bias)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        f = F.leaky_relu(self.conv_first(x), 0.1)
        for conv in self.body:
            f = f + F.leaky_relu(conv(f), 0.1)
        return base + self.shuffle(self.conv_up(f))


def _conv_hyperparameters(sd) -> dict[str, Any]:
    channels = int(sd["conv_first.weight"].shape[0])
    blocks = sum(1 for k in sd if k.startswith("body.") and k.endswith(".weight"))
    scale = int(round((sd["conv_up.weight"].shape[0] // 3) ** 0.5))
    return {"scale": scale, "channels": channels, "blocks": blocks}


def _conv_capabilities(module: nn.Module) -> dict[str, Any]:
    return {"scale": int(module.scale), "stochastic": False, "label": "the model ConvUpsampler"}


CONV_ARCH = NetworkArchitecture(
    id="conv", name="residual conv upsampler (test stand-in)", module_class=lambda: ConvUpsampler,
    keys=KeyCondition(required=("conv_first.weight", "conv_up.weight")), infer=_conv_hyperparameters,
    capabilities=_conv_capabilities, scale_of=lambda kwargs: int(kwargs.get("scale", 4)))


def register() -> None:
    """Make "conv" a registered architecture (once per process)."""
    if "conv" not in REGISTRY:
        REGISTRY.register(CONV_ARCH)


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode alphabet (printable stand-ins for all 256 byte values)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def make_tiny_clip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a random CLIPModel (hidden 16, one layer each tower) and a byte-level CLIP
    tokenizer (no merges) to `folder`, loadable with `from_pretrained(folder, local_files_only=True)`."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    try:
        tok = CLIPTokenizer(vocab=vocab, merges=[])  # transformers >= 5 builds it from the tables
    except TypeError:  # transformers 4.x reads the two files
        tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok.save_pretrained(folder)
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=eos, bos_token_id=bos,
                         pad_token_id=eos),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    register()
    from sr4.cli import main

    sys.exit(main(sys.argv[1:]))
