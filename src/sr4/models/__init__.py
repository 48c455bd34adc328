"""Image models sr4 can run: the registry of architectures and what their descriptors state.

Registered here: MambaIRv2 (classic SR), MambaIRv2-Light, plain bicubic and, tried last, every architecture spandrel
loads (`sr4.models.spandrel`, with the optional extra ``sr4[spandrel]``). `load_model` turns what a user names
(nothing = the bundled default, "bicubic", a checkpoint path, a module) into a `ModelDescriptor`.
"""

from __future__ import annotations

from sr4.models.bicubic import BICUBIC_ARCH
from sr4.models.descriptor import ArchId, ModelDescriptor, ModelTiling, SizeRequirements
from sr4.models.mambairv2 import MAMBAIRV2, MAMBAIRV2_LIGHT
from sr4.models.registry import REGISTRY, Architecture, KeyCondition, NetworkArchitecture, Registry
from sr4.models.spandrel import SPANDREL_ARCH

for _arch in (MAMBAIRV2, MAMBAIRV2_LIGHT, BICUBIC_ARCH, SPANDREL_ARCH):
    REGISTRY.register(_arch)

__all__ = ["REGISTRY", "ArchId", "Architecture", "KeyCondition", "ModelDescriptor", "ModelTiling",
           "NetworkArchitecture", "Registry", "SizeRequirements"]
