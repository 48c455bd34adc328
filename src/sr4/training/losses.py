"""The training objective.

    upsampler mode:        L = w_l1 * L1(U(I), gt) + w_lpips * LPIPS(U(I), gt)
    through-refiner mode:  L = w_l1 * L1(U(I), gt) + w_lpips * LPIPS(M(q(U(I))), gt) + w_clip * L_CLIP(M(q(U(I))))

q is SNUCV's 8-bit rounding of U(I) before M, passed by a straight-through estimator so the
gradient of M's loss reaches U (round() alone has zero gradient almost everywhere); the trainer
uses the same `sr4.ops.quantize_8bit_ste` as inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


def build_lpips(net: str = "alex", weights: str | None = None) -> nn.Module:
    """Frozen differentiable LPIPS from sr4.metrics (inputs in [0, 1], returns per-image distances).

    `weights`: folder holding pyiqa's LPIPS file (and torchvision's AlexNet if the file lacks the
    trunk), laid out as torch's hub dir or flat; None = $TORCH_HOME/hub. Never downloads."""
    if net != "alex":
        raise ValueError(f"loss.lpips_net={net!r}: sr4.metrics.lpips provides the AlexNet variant only")
    from sr4.metrics.lpips import LPIPS

    module = LPIPS.from_pretrained(weights)
    module.eval().requires_grad_(False)
    return module


@dataclass
class LossTerms:
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted, detached
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. CLIP scores


class SRLoss(nn.Module):
    """Weighted sum of the configured terms; modules for LPIPS / CLIP are frozen and given in."""

    def __init__(self, l1: float = 1.0, lpips: float = 0.0, clip: float = 0.0,
                 lpips_module: nn.Module | None = None, clip_module: nn.Module | None = None) -> None:
        super().__init__()
        if lpips > 0 and lpips_module is None:
            raise ValueError("loss.lpips > 0 needs an LPIPS module")
        if clip > 0 and clip_module is None:
            raise ValueError("loss.clip > 0 needs a CLIP module")
        self.w_l1, self.w_lpips, self.w_clip = l1, lpips, clip
        self.lpips = lpips_module
        self.clip = clip_module

    def forward(self, sr: torch.Tensor, gt: torch.Tensor, refined: torch.Tensor | None = None) -> LossTerms:
        """`sr` = U(I); `refined` = M(q(U(I))) in through-refiner mode (LPIPS/CLIP apply to it), else None."""
        target = sr if refined is None else refined
        total = sr.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        extras: dict[str, torch.Tensor] = {}
        if self.w_l1 > 0:
            l1 = F.l1_loss(sr, gt)
            total = total + self.w_l1 * l1
            parts["l1"] = l1.detach()
        if self.w_lpips > 0:
            assert self.lpips is not None  # checked in __init__
            lp = self.lpips(target.float(), gt.float()).mean()
            total = total + self.w_lpips * lp
            parts["lpips"] = lp.detach()
        if self.w_clip > 0:
            if refined is None:
                raise ValueError("the CLIP term is defined on the refiner's output")
            assert self.clip is not None  # checked in __init__
            lc, scores = self.clip(refined.float())
            total = total + self.w_clip * lc
            parts["clip"] = lc.detach()
            extras["clip_pos"] = scores[:, 0].mean().detach()
            extras["clip_neg"] = scores[:, 1].mean().detach()
        parts["total"] = total.detach()
        return LossTerms(total, parts, extras)
