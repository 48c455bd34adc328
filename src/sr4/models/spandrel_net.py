"""The module sr4 runs a spandrel model as (`sr4.models.spandrel`): imported with the first such model, with torch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SpandrelNet(nn.Module):
    """A network loaded by spandrel, run through spandrel's descriptor call (padding, call function, clamp).

    The network is the submodule `net` (so moving, copying and counting parameters work as for any module); the
    descriptor goes along as a plain attribute and calls that same module. Models of one channel (grayscale
    denoisers) run on each of the red, green and blue planes.
    """

    def __init__(self, descriptor: Any) -> None:
        super().__init__()
        self.net = descriptor.model
        self.descriptor = descriptor
        self.scale = int(descriptor.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_plane = self.descriptor.input_channels == 1 and x.shape[1] != 1
        if per_plane:
            b, c, h, w = x.shape
            x = x.reshape(b * c, 1, h, w)
        # spandrel's call runs in inference mode: clone its output into an ordinary tensor for what follows
        y = torch.cat([self.descriptor(x[i:i + 1]) for i in range(x.shape[0])]).clone()
        return y.reshape(b, c, *y.shape[-2:]) if per_plane else y
