"""The selective scan as a plain PyTorch step loop: the ground truth every faster backend is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sr4.networks.scan.args import ScanArgs, scan_function


def _expand_groups(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, G, N, L) -> (B, D, N, L): channel d reads group d // (D // G), as mamba_ssm's repeat does."""
    groups = x.shape[1]
    return x.repeat_interleave(dim // groups, dim=1) if groups != dim else x


def reference_scan(args: ScanArgs) -> torch.Tensor:
    """Step loop materialising (B, D, L, N) decay and input tensors, like mamba_ssm's `selective_scan_ref`.

    All arithmetic is fp32 (fp64 for fp64 inputs); the result has u's dtype."""
    dtype_in = args.u.dtype
    work = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, A = args.u.to(work), args.delta.to(work), args.A.to(work)
    dim = A.shape[0]
    B = _expand_groups(args.B4.to(work), dim).transpose(2, 3)  # (B, D, L, N)
    C = _expand_groups(args.C4.to(work), dim).transpose(2, 3)
    if args.delta_bias is not None:
        delta = delta + args.delta_bias.to(work)[None, :, None]
    if args.delta_softplus:
        delta = F.softplus(delta)  # beta 1, threshold 20, as in mamba_ssm
    decay = torch.exp(delta.unsqueeze(-1) * A[None, :, None, :])  # (B, D, L, N)
    drive = (delta * u).unsqueeze(-1) * B
    h = u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    # unbind (rather than indexing per step) keeps autograd's backward to one stack per tensor instead
    # of one full-size zero tensor per step.
    for decay_t, drive_t, c_t in zip(decay.unbind(2), drive.unbind(2), C.unbind(2)):
        h = decay_t * h + drive_t
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape)
    if args.D is not None:
        y = y + u * args.D.to(work)[None, :, None]
    return y.to(dtype_in)


#: the reference with mamba_ssm's signature (arguments checked).
selective_scan_reference = scan_function(reference_scan)
