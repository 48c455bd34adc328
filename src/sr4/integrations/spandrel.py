"""MambaIRv2 and MambaIRv2-Light as spandrel architectures, so ComfyUI, chaiNNer and anything else that loads
models through ``spandrel.ModelLoader`` can read MambaIRv2 checkpoints (classic and lightweight, every scale and
head, the released ones and SNUCV's ``mamba_trained.pth`` among them).

    import sr4.integrations.spandrel
    sr4.integrations.spandrel.install()          # once per process; safe to repeat
    model = spandrel.ModelLoader().load_from_file("mambairv2_classicSR_Base_x4.pth")
    torch.manual_seed(0)                         # MambaIRv2 draws routing noise on every call
    sr = model(lr)                               # (1, 3, H, W) in [0, 1] -> (1, 3, 4H, 4W)

``install()`` adds the two architectures to spandrel's main registry the way
``spandrel_extra_arches.install()`` adds its own: after the architectures already there, so detection of every
other model is unchanged (MambaIRv2's keys match no other architecture's detection, and its detection needs the
selective-scan parameters that only MambaIR has). It works with or without ``spandrel_extra_arches``, in either
order. Detection reads every hyperparameter from the key shapes with sr4's own detection
(``sr4.models.mambairv2``), and the network is sr4's MambaIRv2 (same state dict and maths as
csguoh/MambaIR ``mambairv2_arch.MambaIRv2`` and ``mambairv2light_arch.MambaIRv2Light``), so neither CUDA nor
mamba_ssm is needed: the selective scan runs with numba on the CPU and with mamba_ssm's kernel, or a chunked
PyTorch scan, on CUDA.

Random routing: MambaIRv2 routes tokens with a hard Gumbel-softmax and, as in the official code, draws the Gumbel
noise at inference too, from torch's global random generator. Each call therefore gives a slightly different
image; ``torch.manual_seed(s)`` right before the call makes it reproducible (and, on the CPU, equal to sr4's
``Upscaler(path, tile=None, seed=s, dtype="fp32")``). A host that cuts the image into tiles (ComfyUI: 512 px
tiles above that size) draws fresh noise per tile, so its result depends on the tiling.
"""

from __future__ import annotations

from typing import Any

try:
    from spandrel import (
        MAIN_REGISTRY,
        Architecture,
        ArchRegistry,
        ArchSupport,
        ImageModelDescriptor,
        ModelTiling,
        SizeRequirements,
        StateDict,
    )
    from spandrel.util import KeyCondition
except ImportError as exc:  # the module is useless without spandrel: say which extra brings it
    from sr4.optional import install_hint

    raise ImportError(f"sr4.integrations.spandrel needs spandrel ({exc.name or exc} is not importable): "
                      f"{install_hint('spandrel')}", name=exc.name) from exc

import torch

from sr4.models.mambairv2 import MAMBAIRV2, MAMBAIRV2_LIGHT

_LAYER0 = "layers.0.residual_group.layers.0."
# Keys every MambaIRv2 state dict has, whatever the size, scale or head (see tests/data/mambairv2/*.keys.tsv).
_COMMON = (
    "conv_first.weight",
    "relative_position_index_SA",
    _LAYER0 + "win_mhsa.relative_position_bias_table",
    _LAYER0 + "embeddingA.weight",
    _LAYER0 + "assm.selectiveScan.A_logs",
    _LAYER0 + "assm.embeddingB.weight",
    _LAYER0 + "assm.route.0.weight",
)
# The feed-forward block tells the variants apart: ConvFFN (classic) or a spatial gate (light).
_CLASSIC_FFN = _LAYER0 + "convffn1.dwconv.depthwise_conv.0.weight"
_LIGHT_FFN = _LAYER0 + "convffn1.sg.norm.weight"


class MambaIRv2Arch(Architecture[torch.nn.Module]):
    """One MambaIRv2 variant (classic or light) for spandrel: detection by keys, hyperparameters by shapes."""

    def __init__(self, light: bool) -> None:
        self._sr4 = MAMBAIRV2_LIGHT if light else MAMBAIRV2
        ffn, other = (_LIGHT_FFN, _CLASSIC_FFN) if light else (_CLASSIC_FFN, _LIGHT_FFN)
        has_ffn = KeyCondition.has_all(*_COMMON, ffn)
        super().__init__(
            id=self._sr4.id,
            name="MambaIRv2-Light" if light else "MambaIRv2",
            detect=lambda sd: has_ffn(sd) and other not in sd,
        )

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[Any]:
        # A float32 copy: the network must own its weights (the caller's state dict stays untouched and two
        # descriptors loaded from one state dict stay independent) and be float32 like every spandrel model.
        owned = {k: v.to(torch.float32 if v.is_floating_point() else v.dtype, copy=True)
                 for k, v in state_dict.items()}
        # sr4's own detection, hyperparameters and strict loading (CheckpointError naming what does not fit)
        loaded = self._sr4.load(owned, name=f"{self.name} state dict")
        model, kwargs, scale = loaded.model.eval(), loaded.hyperparameters, loaded.scale
        return ImageModelDescriptor(
            model,
            owned,
            architecture=self,
            purpose=loaded.purpose,
            tags=[f"{kwargs['embed_dim']}dim", f"w{kwargs['window_size']}", kwargs["upsampler"] or "same-size"],
            # sr4 runs MambaIRv2 in float16 only with a float32 retry of the tiles that overflow; a spandrel host
            # has no such retry, so float16 is not offered (spandrel's window transformers, SwinIR and HAT, do
            # not offer it either). bfloat16 has float32's range and the selective scan computes in float32.
            supports_half=False,
            supports_bfloat16=True,
            scale=scale,
            input_channels=kwargs["in_chans"],
            output_channels=kwargs["in_chans"],
            # The network mirror-pads to a window multiple itself (as the official code): only a minimum.
            size_requirements=SizeRequirements(minimum=loaded.size_requirements.minimum),
            tiling=ModelTiling.SUPPORTED,
        )


def architectures() -> list[ArchSupport]:
    """sr4's spandrel architectures (new objects on each call): MambaIRv2, then MambaIRv2-Light."""
    return [ArchSupport.from_architecture(MambaIRv2Arch(light=False)),
            ArchSupport.from_architecture(MambaIRv2Arch(light=True))]


def install(registry: ArchRegistry | None = None) -> list[ArchSupport]:
    """Add MambaIRv2 and MambaIRv2-Light to ``registry`` (spandrel's ``MAIN_REGISTRY`` by default), after the
    architectures already there. Repeating it changes nothing; an architecture of the same id already in the
    registry (a later spandrel with its own MambaIRv2) is kept. Returns the architectures it added."""
    target = MAIN_REGISTRY if registry is None else registry
    return target.add(*architectures(), ignore_duplicates=True)


__all__ = ["MambaIRv2Arch", "architectures", "install"]
