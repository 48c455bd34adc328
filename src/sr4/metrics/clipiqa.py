"""CLIP-IQA (Wang, Chan & Loy, AAAI 2023) exactly as ``pyiqa.create_metric('clipiqa')`` v0.1.13 computes it.

Recipe (pyiqa's defaults: ``model_type='clipiqa'``, ``backbone='RN50'``, ``pos_embedding=False``):

1. the image, (B, 3, H, W) in [0, 1] at its own size (no resize, no crop), is normalised with
   OpenAI CLIP's mean/std and encoded by CLIP RN50's ModifiedResNet; with ``pos_embedding=False``
   the attention pool adds NO positional embedding at any input size (with ``True``, pyiqa
   bicubically stretches the 7x7+1 table to the token count);
2. five antonym prompt pairs (``PROMPTS``) are encoded by CLIP's text tower;
3. logits = exp(logit_scale) * cos(image, prompt); a softmax over each (positive, negative)
   pair; the score is the positive probability averaged over the five pairs, in (0, 1).

Tokens: the prompts are fixed, so their byte-pair-encoded ids are written out below instead of
shipping CLIP's 1.3 MB BPE vocabulary. They are what the MIT-licensed ``clip.tokenize`` gives
(lower-cased words, ``<|startoftext|>`` 49406 first, ``<|endoftext|>`` 49407 last); the test
data records ``clip.tokenize``'s own output and the tests compare. These ids depend only on the
public vocabulary, not on any weights.

Weights: OpenAI's ``RN50.pt`` (a TorchScript archive, read without running its code; see
``sr4.metrics.clip_model``) from ``<root>/clip/RN50.pt`` or ``<root>/RN50.pt``; the root is
``$TORCH_HOME/hub`` unless ``weights_dir`` is given. pyiqa stores the network in float32 on
every device, and so does this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from sr4.metrics.clip_model import CLIP, CLIPConfig, read_clip_state_dict
from sr4.metrics.weights import CLIP_RN50, WeightFile, WeightsError, assign, resolve_root

VERSION = "CLIP-IQA RN50 (pyiqa 0.1.13 'clipiqa' semantics)"
WEIGHT_FILES: tuple[WeightFile, ...] = (CLIP_RN50,)
# sha256 of OpenAI's RN50.pt (the last folder of its download URL); reported, not enforced.
RN50_SHA256 = "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"

PROMPTS: tuple[tuple[str, str], ...] = (
    ("Good image", "bad image"),
    ("Sharp image", "blurry image"),
    ("sharp edges", "blurry edges"),
    ("High resolution image", "low resolution image"),
    ("Noise-free image", "noisy image"),
)
SOT, EOT = 49406, 49407
# CLIP BPE ids of the prompts, in PROMPTS order (positive, negative), without SOT/EOT.
# good 886, bad 2103, sharp 8157, blurry 21977, image 2867, edges 20938, high 1400, low 1042,
# resolution 9977, noise 9307, "-" 268, free 1139, noisy 33495.
PROMPT_IDS: tuple[tuple[int, ...], ...] = (
    (886, 2867), (2103, 2867),
    (8157, 2867), (21977, 2867),
    (8157, 20938), (21977, 20938),
    (1400, 9977, 2867), (1042, 9977, 2867),
    (9307, 268, 1139, 2867), (33495, 2867),
)

# Five halvings (stride-2 stem conv, its pool, layers 2-4) must leave at least one pixel.
MIN_SIZE = 31
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def prompt_tokens(context_length: int | None = None) -> torch.Tensor:
    """(10, L) int64 ids as ``clip.tokenize`` lays them out (SOT, ids, EOT, zeros).

    L is ``context_length`` (77 reproduces ``clip.tokenize``) or, by default, just long enough
    for the longest prompt.
    """
    longest = max(len(ids) for ids in PROMPT_IDS) + 2
    length = longest if context_length is None else context_length
    if length < longest:
        raise ValueError(f"context length {length} is shorter than the longest prompt ({longest} tokens)")
    out = torch.zeros(len(PROMPT_IDS), length, dtype=torch.int64)
    for i, ids in enumerate(PROMPT_IDS):
        out[i, : len(ids) + 2] = torch.tensor((SOT, *ids, EOT))
    return out


class CLIPIQA(nn.Module):
    tokens: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    """No-reference CLIP-IQA. ``CLIPIQA()`` is RN50-sized with zero weights; use ``from_pretrained``.

    ``forward(x)``: (B, 3, H, W) in [0, 1] (H, W >= 31; not clamped, pyiqa checks the range; a grey
    (B, 1, H, W) counts as three equal channels) ->
    (B,) scores in (0, 1), higher is better. Differentiable with respect to ``x``; its own
    parameters are frozen.
    """

    def __init__(self, config: CLIPConfig | None = None, pos_embedding: bool = False) -> None:
        super().__init__()
        self.clip = CLIP(config or CLIPConfig())
        self.pos_embedding = pos_embedding
        if self.clip.config.vocab_size <= EOT:
            raise ValueError(f"vocab_size {self.clip.config.vocab_size} cannot hold CLIP's end-of-text id {EOT}")
        self.register_buffer("tokens", prompt_tokens(), persistent=False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def prompt_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 10) scaled cosine similarities of the images with the ten prompts (pyiqa's logits_per_image)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"CLIP-IQA expects a (B, 3, H, W) or (B, 1, H, W) tensor, got {tuple(x.shape)}")
        if min(x.shape[2:]) < MIN_SIZE:
            raise ValueError(f"CLIP-IQA needs at least {MIN_SIZE} pixels per side, got {x.shape[3]}x{x.shape[2]}")
        # A grey (B, 1, H, W) input broadcasts against the 3-channel mean, as it does in pyiqa.
        dtype = self.mean.dtype
        image = self.clip.encode_image((x.to(dtype) - self.mean) / self.std, self.pos_embedding)
        text = self.clip.encode_text(self.tokens)
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.clip.logit_scale.exp() * image @ text.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.prompt_logits(x)
        probs = logits.view(logits.shape[0], len(PROMPTS), 2).softmax(dim=-1)
        return probs[..., 0].mean(dim=1)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                  pos_embedding: bool = False) -> CLIPIQA:
        """Build from an OpenAI CLIP ResNet checkpoint (TorchScript ``RN50.pt`` or a plain state dict)."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: CLIP weight file not found")
        tensors = read_clip_state_dict(path)
        config = CLIPConfig.from_state_dict(tensors, path)
        if config.vocab_size <= EOT:
            raise WeightsError(f"{path}: vocabulary of {config.vocab_size} tokens, CLIP's BPE needs {EOT + 1}")
        model = cls(config, pos_embedding=pos_embedding)
        filled: set[str] = set()
        assign(model.clip, tensors, path, filled)
        missing = [k for k in model.clip.state_dict() if k not in filled]
        if missing:
            shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
            raise WeightsError(f"{path}: {len(missing)} CLIP tensors missing: {shown}")
        return model.to(device)

    @classmethod
    def from_pretrained(cls, weights_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                        pos_embedding: bool = False) -> CLIPIQA:
        """Load ``RN50.pt`` from ``weights_dir`` (or ``$TORCH_HOME/hub``): ``clip/RN50.pt`` or ``RN50.pt``."""
        root = resolve_root(weights_dir)
        found = CLIP_RN50.find(root)
        if found is None:
            looked = " or ".join(str(p) for p in CLIP_RN50.candidates(root))
            raise WeightsError(f"CLIP-IQA weights not found: {looked} (OpenAI CLIP {CLIP_RN50.name}; never downloaded)")
        return cls.from_file(found, device=device, pos_embedding=pos_embedding)
