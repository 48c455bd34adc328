"""Swin-style window helpers shared by MambaIRv2's window attention and MANIQA's Swin blocks."""

from __future__ import annotations

import torch


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(b, h, w, c) -> (b * h/ws * w/ws, ws*ws, c), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (b * nW, ws*ws, c) -> (b, h, w, c)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) int64 index into the ((2ws-1)^2, heads) relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int | None = None,
                        device: torch.device | None = None) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) additive mask: -100 between tokens that came from different regions after the
    cyclic roll by `shift` (default ws // 2), 0 otherwise."""
    shift = ws // 2 if shift is None else shift
    img = torch.zeros(1, h, w, 1, device=device)
    regions = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in regions:
        for wsl in regions:
            img[:, hs, wsl, :] = label
            label += 1
    win = window_partition(img, ws).squeeze(-1)  # (nW, ws*ws)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(-100.0, device=device), torch.tensor(0.0, device=device))
