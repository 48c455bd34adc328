"""MambaIRv2-Light (csguoh/MambaIR ``mambairv2light_arch.MambaIRv2Light``), same state_dict and maths."""

from __future__ import annotations

from sr4.networks.blocks import MambaIRv2Base, gated_mlp


class MambaIRv2Light(MambaIRv2Base):
    """MambaIRv2 with GatedMLP feed-forward blocks (lightweight SR).

    Same constructor as :class:`sr4.networks.mambairv2.MambaIRv2`; ``convffn_kernel_size`` is accepted but,
    as in the official code, the gate's depthwise conv is always 5x5.
    """

    ffn = staticmethod(gated_mlp)
