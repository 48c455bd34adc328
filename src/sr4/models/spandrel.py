"""Every image model spandrel loads (ESRGAN, Compact, SwinIR, HAT, DAT, RealPLKSR, ... : 40-odd architectures) as one
foreign architecture of sr4's registry, so ``--model FILE``, ``sr4.Upscaler(path)``, ``sr4 info``, SNUCV's stage U,
``sr4 eval --lr-dir`` and ``sr4 serve`` take them with sr4's tiling, image I/O, atomic writes and batch rules.

It is registered last and tried last (`Architecture.detect_last`): sr4's own MambaIRv2 detection always comes first,
and spandrel architectures with the id of one of sr4's (MambaIRv2 after `sr4.integrations.spandrel.install()`) are
skipped, so sr4 never runs its own models through spandrel. spandrel (MIT, chaiNNer-org/spandrel) is the optional
extra ``sr4[spandrel]``; it is imported only when a file none of sr4's architectures claims is detected, so sr4
starts without it and, without it, such a file gets an error naming the extra.

What runs is spandrel's own call (``ImageModelDescriptor.__call__``: its padding to the size requirements, the
architecture's call function, the clamp to [0, 1]); the descriptor's scale, size requirements, dtypes (float16 and
bfloat16 only where spandrel says the architecture supports them), purpose and tiling advice are spandrel's.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from sr4.errors import CheckpointError, ConfigError
from sr4.models.descriptor import ArchId, ModelDescriptor, ModelTiling, Purpose, SizeRequirements
from sr4.models.registry import REGISTRY, Architecture, check_finite
from sr4.optional import install_hint

if TYPE_CHECKING:  # torch loads with a model (the registry is imported by `sr4 --help` and `sr4 info`)
    from torch import nn

    from sr4.models.registry import StateDict
    from sr4.models.spandrel_net import SpandrelNet

#: the registry id of the foreign architecture.
SPANDREL = "spandrel"


def import_spandrel() -> ModuleType | None:
    """The spandrel package, or None when it is not installed (or does not import: no torchvision)."""
    try:
        import spandrel
    except ImportError:
        return None
    return cast(ModuleType, spandrel)


_TILING = {"SUPPORTED": ModelTiling.SUPPORTED, "DISCOURAGED": ModelTiling.DISCOURAGED,
           "INTERNAL": ModelTiling.INTERNAL}


def describe_spandrel(descriptor: Any, net: SpandrelNet | None = None) -> ModelDescriptor:
    """sr4's descriptor of a spandrel `ImageModelDescriptor` (everything stated is spandrel's)."""
    import spandrel
    import torch

    from sr4.models.spandrel_net import SpandrelNet

    arch = descriptor.architecture
    req = descriptor.size_requirements
    dtypes = (torch.float32, *((torch.float16,) if descriptor.supports_half else ()),
              *((torch.bfloat16,) if descriptor.supports_bfloat16 else ()))
    module = net if net is not None else SpandrelNet(descriptor)
    hyperparameters = dict(getattr(descriptor.model, "hyperparameters", {}) or {})
    return ModelDescriptor(
        model=module, arch=ArchId(str(arch.id), str(arch.name)),
        scale=int(descriptor.scale),
        size_requirements=SizeRequirements(minimum=max(1, int(req.minimum)), multiple_of=int(req.multiple_of),
                                           square=bool(req.square)),
        supported_dtypes=dtypes, stochastic=False, purpose=cast(Purpose, descriptor.purpose),
        tiling=_TILING.get(descriptor.tiling.name, ModelTiling.SUPPORTED),
        input_channels=3 if descriptor.input_channels == 1 else int(descriptor.input_channels),
        output_channels=3 if descriptor.output_channels == 1 else int(descriptor.output_channels),
        hyperparameters={"loaded_by": f"spandrel {spandrel.__version__}", "tags": list(descriptor.tags),
                         **hyperparameters},
        label=f"the {arch.name} model")


class SpandrelArchitecture(Architecture):
    """Whatever spandrel's main registry detects, tried after sr4's own architectures."""

    id = SPANDREL
    name = "any architecture spandrel loads"
    detect_last = True

    @staticmethod
    def _own_ids() -> set[str]:
        return {a.id for a in REGISTRY if a.id != SPANDREL}

    def _candidates(self, spandrel: ModuleType) -> list[Any]:
        own = self._own_ids()
        return [a for a in spandrel.MAIN_REGISTRY.architectures("detection") if str(a.architecture.id) not in own]

    def _find(self, state_dict: StateDict) -> tuple[Any, StateDict] | None:
        spandrel = import_spandrel()
        if spandrel is None:
            return None
        sd = spandrel.canonicalize_state_dict(dict(state_dict))
        for support in self._candidates(spandrel):
            if support.detect(sd):
                return support, sd
        return None

    def detect(self, state_dict: StateDict) -> bool:
        return self._find(state_dict) is not None

    def why_not(self, state_dict: StateDict) -> str:
        spandrel = import_spandrel()
        if spandrel is None:
            return f"spandrel, which loads ESRGAN, Compact, SwinIR, HAT, DAT and more, is not installed: " \
                   f"{install_hint('spandrel')}"
        ids = [str(a.architecture.id) for a in self._candidates(spandrel)]
        return f"none of the {len(ids)} architectures of spandrel {spandrel.__version__} detects it: {', '.join(ids)}"

    def load(self, state_dict: StateDict, name: str = "checkpoint") -> ModelDescriptor:
        found = self._find(state_dict)
        if found is None:
            raise CheckpointError(f"{name}: not a spandrel checkpoint ({self.why_not(state_dict)})")
        support, sd = found
        arch = support.architecture
        check_finite(sd, name)
        try:
            loaded = arch.load(sd)
        except (KeyError, IndexError, ValueError, RuntimeError, AssertionError, TypeError) as exc:
            text = " ".join(str(exc).split()) or "no message"  # torch's key report spans lines: one line here
            shown = text if len(text) <= 400 else text[:400] + " ..."
            raise CheckpointError(f"{name}: spandrel recognises a {arch.name} checkpoint but cannot load it "
                                  f"({type(exc).__name__}: {shown})") from exc
        import spandrel

        if not isinstance(loaded, spandrel.ImageModelDescriptor):
            raise CheckpointError(f"{name}: a {arch.name} model ({loaded.purpose}) takes a mask besides the image; "
                                  "sr4 runs image-to-image models only")
        channels = (loaded.input_channels, loaded.output_channels)
        if channels not in ((3, 3), (1, 1)):
            raise CheckpointError(f"{name}: a {arch.name} model with {channels[0]} input and {channels[1]} output "
                                  "channels; sr4 runs RGB (3 -> 3) and grayscale (1 -> 1, per plane) models")
        loaded.model.eval()
        return dataclasses.replace(describe_spandrel(loaded), label=f"the {arch.name} model {name}")

    def build(self, **kwargs: Any) -> ModelDescriptor:
        raise ConfigError("spandrel models are loaded from their checkpoint files (--model FILE), not built from "
                          "arguments")

    def describe(self, module: nn.Module) -> ModelDescriptor | None:
        from sr4.models.spandrel_net import SpandrelNet

        if not isinstance(module, SpandrelNet):
            return None
        return describe_spandrel(module.descriptor, module)


SPANDREL_ARCH = SpandrelArchitecture()
