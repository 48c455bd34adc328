"""Exponential moving average of a model's weights (kept in the model's own key layout)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """shadow = decay * shadow + (1 - decay) * param after each optimiser step; non-float
    buffers (e.g. index tables) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.dtype.is_floating_point:
                s.lerp_(v.detach(), 1.0 - self.decay)
            else:
                s.copy_(v)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        extra = set(state) - set(self.shadow)
        if missing or extra:
            raise KeyError(f"EMA state does not match the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(extra)[:5]}")
        with torch.no_grad():
            for k, v in state.items():
                self.shadow[k].copy_(v)
