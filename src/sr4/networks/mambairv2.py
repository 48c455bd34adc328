"""MambaIRv2 for classic SR (csguoh/MambaIR ``mambairv2_arch.MambaIRv2``), same state_dict and maths."""

from __future__ import annotations

from sr4.networks.blocks import MambaIRv2Base, conv_ffn


class MambaIRv2(MambaIRv2Base):
    """MambaIRv2 with ConvFFN feed-forward blocks.

    Constructor arguments and defaults are the official ones (``upscale``, ``in_chans``, ``img_size``,
    ``embed_dim``, ``d_state``, ``depths``, ``num_heads``, ``window_size``, ``inner_rank``, ``num_tokens``,
    ``convffn_kernel_size``, ``mlp_ratio``, ``qkv_bias``, ``img_range``, ``upsampler``, ``resi_connection``,
    ``patch_size``, ``norm_layer``, ``ape``, ``patch_norm``, ``use_checkpoint``). ``use_checkpoint`` is accepted
    and ignored, as in the official code. ``scan_backend`` (default ``"auto"``, not in the official code) picks the
    ``selective_scan`` backend; it can be changed later through the ``scan_backend`` attribute. Unlike the official
    constructor, an unknown argument is a TypeError (a misspelt argument would otherwise build a default network).
    """

    ffn = staticmethod(conv_ffn)
