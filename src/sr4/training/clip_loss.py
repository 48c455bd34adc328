"""SNUCV's CLIP prompt loss: L_CLIP = 1 - S_pos + S_neg, with S = cos(CLIP_img(x), CLIP_txt(prompt)).

The CLIP model is frozen and read from a local folder (transformers layout, no hub access).
The two prompt embeddings are computed once; only the image tower runs per step, and it is
differentiable with respect to its input so gradients reach the image being scored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sr4.optional import require

# OpenAI CLIP preprocessing constants (used when the folder has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPPromptLoss(nn.Module):
    text: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    vision: Any  # transformers' CLIP towers (an optional dependency)
    projection: Any

    def __init__(self, path: str | Path, positive: str = "Good photo", negative: str = "Bad photo") -> None:
        super().__init__()
        require("train", "the CLIP loss")
        from transformers import AutoTokenizer, CLIPModel

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: CLIP model folder does not exist (loss.clip_path)")
        try:
            model = CLIPModel.from_pretrained(path, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot load a CLIPModel and tokenizer ({exc})") from exc
        model.eval().requires_grad_(False)
        with torch.no_grad():
            tokens = tokenizer([positive, negative], padding=True, return_tensors="pt")
            text = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            text = F.normalize(model.text_projection(text.pooler_output), dim=-1)
        self.register_buffer("text", text, persistent=False)  # (2, D): positive, negative
        self.vision = model.vision_model
        self.projection = model.visual_projection
        vision_config: Any = model.config.vision_config
        self.image_size = int(vision_config.image_size)
        mean, std = CLIP_MEAN, CLIP_STD
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            conf = json.loads(pre.read_text(encoding="utf-8"))
            mean, std = tuple(conf.get("image_mean", mean)), tuple(conf.get("image_std", std))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> CLIPPromptLoss:
        return super().train(False)  # frozen: never switch the towers to training behaviour

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """CLIPImageProcessor semantics on tensors: shortest side to image_size (bicubic,
        antialiased), centre crop, normalise. Differentiable."""
        s = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (s, s):
            k = s / min(h, w)
            nh, nw = max(s, round(h * k)), max(s, round(w * k))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[..., top:top + s, left:left + s]
        return (x - self.mean) / self.std

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2) cosine similarities of images in [0, 1] to the positive and negative prompts."""
        dtype = self.projection.weight.dtype
        out = self.vision(pixel_values=self.preprocess(x.to(dtype)))
        feats = F.normalize(self.projection(out.pooler_output), dim=-1)
        return feats.float() @ self.text.float().t()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss averaged over the batch, scores (B, 2))."""
        s = self.scores(x)
        return (1.0 - s[:, 0] + s[:, 1]).mean(), s
