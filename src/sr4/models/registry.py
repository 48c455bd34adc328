"""The registry of image-model architectures: ids, detection from state-dict keys, building, loading.

Every architecture sr4 can run registers here once (`REGISTRY.register`), after spandrel's ``Architecture`` and
timm's ``register_model``: it detects its checkpoints from their keys, reads its hyperparameters from their
shapes, builds its network from keyword arguments (rejecting unknown ones by name) and describes a built network
(`ModelDescriptor`). Names are matched without regard to case, ``_`` or ``-`` (``mambairv2_light`` is
``MambaIRv2Light``), so training configs and files share one set of ids.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import inspect
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sr4.checkpoints import read_state_dict
from sr4.errors import CheckpointError, ConfigError
from sr4.models.descriptor import ArchId, ModelDescriptor

if TYPE_CHECKING:  # detection reads only key names and `.shape`: a safetensors header serves without torch
    import torch
    from torch import nn

    StateDict = Mapping[str, torch.Tensor]


def normalise(name: str) -> str:
    """The registry's form of a name: lower case, letters and digits only."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


class Architecture(abc.ABC):
    """One kind of network. Subclasses set `id` and `name` and implement what they support."""

    id: str
    name: str
    #: False for models that have no weights file (bicubic): detection skips them.
    loads_files: bool = True
    #: True for a foreign registry (spandrel) that may claim what sr4's own architectures did not: tried last.
    detect_last: bool = False

    @property
    def arch_id(self) -> ArchId:
        return ArchId(self.id, self.name)

    def detect(self, state_dict: StateDict) -> bool:
        """Whether the keys are this architecture's (shapes are checked when loading)."""
        return False

    def why_not(self, state_dict: StateDict) -> str:
        """Why `detect` said no, for the error that lists what was tried."""
        return "not detected"

    @abc.abstractmethod
    def load(self, state_dict: StateDict, name: str = "checkpoint") -> ModelDescriptor:
        """Build the network the weights describe and load them strictly (CheckpointError naming `name`)."""

    @abc.abstractmethod
    def build(self, **kwargs: Any) -> ModelDescriptor:
        """A freshly initialised network from constructor arguments; unknown arguments raise ConfigError."""

    def describe(self, module: nn.Module) -> ModelDescriptor | None:
        """The descriptor of an already built module of this architecture; None when it is not one."""
        return None


@dataclass(frozen=True)
class KeyCondition:
    """State-dict keys that identify an architecture: all of `required` present (and none of `excluded`)."""

    required: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    present: tuple[str, ...] = ()  # at least one of these, when given

    def missing(self, state_dict: StateDict) -> list[str]:
        out = [k for k in self.required if k not in state_dict]
        out += [f"not {k}" for k in self.excluded if k in state_dict]
        if self.present and not any(k in state_dict for k in self.present):
            out.append(" or ".join(self.present))
        return out


@dataclass(frozen=True)
class NetworkArchitecture(Architecture):
    """An architecture whose network sr4 builds itself: a module class, key detection, hyperparameter inference.

    `module_class` imports the network class on demand (so the registry stays cheap to import); `infer` reads the
    constructor arguments from a state dict's shapes; `capabilities` states, for a built module, what the
    descriptor says besides the module (scale, size requirements, dtypes, randomness, memory, purpose, tiling).
    """

    id: str
    name: str
    module_class: Callable[[], type[nn.Module]]
    keys: KeyCondition
    infer: Callable[[StateDict], dict[str, Any]]
    capabilities: Callable[[nn.Module], dict[str, Any]]
    #: the output size factor of a set of constructor arguments (without building).
    scale_of: Callable[[Mapping[str, Any]], int]
    #: extra checks on the keys beyond `keys` (e.g. a layer count), returning what is missing.
    check_keys: Callable[[StateDict], list[str]] = field(default=lambda sd: [])
    #: the smallest input side a set of constructor arguments accepts (without building; `sr4 info` reads it
    #: from a file's header). A built module's own rule is in `capabilities`; the contract tests compare the two.
    min_size_of: Callable[[Mapping[str, Any]], int] = field(default=lambda kwargs: 1)

    def detect(self, state_dict: StateDict) -> bool:
        return not self.keys.missing(state_dict) and not self.check_keys(state_dict)

    def why_not(self, state_dict: StateDict) -> str:
        missing = self.keys.missing(state_dict) or self.check_keys(state_dict)
        return f"no {', '.join(missing)}"

    def parameters(self) -> tuple[str, ...]:
        """The constructor's argument names."""
        signature = inspect.signature(self.module_class().__init__)
        return tuple(n for n, p in signature.parameters.items()
                     if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def check_arguments(self, kwargs: Mapping[str, Any]) -> None:
        """ConfigError naming every argument the constructor does not take (with the closest valid name)."""
        valid = self.parameters()
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, valid, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"{self.id}: unknown argument(s) {', '.join(hints)}; valid: {', '.join(valid)}")

    def build_module(self, **kwargs: Any) -> nn.Module:
        self.check_arguments(kwargs)
        return self.module_class()(**kwargs)

    def build(self, **kwargs: Any) -> ModelDescriptor:
        module = self.build_module(**kwargs)
        return self._descriptor(module, dict(kwargs))

    def describe(self, module: nn.Module) -> ModelDescriptor | None:
        if not isinstance(module, self.module_class()):
            return None
        return self._descriptor(module, {})

    def _descriptor(self, module: nn.Module, hyperparameters: dict[str, Any]) -> ModelDescriptor:
        return ModelDescriptor(model=module, arch=self.arch_id, hyperparameters=hyperparameters,
                               **self.capabilities(module))

    def hyperparameters(self, state_dict: StateDict, name: str = "checkpoint") -> dict[str, Any]:
        """The constructor arguments the shapes tell; CheckpointError when keys are missing or inconsistent."""
        try:
            return self.infer(state_dict)
        except (KeyError, IndexError, ValueError, ZeroDivisionError) as exc:
            raise CheckpointError(f"{name}: incomplete or inconsistent {self.id} checkpoint ({exc!r})") from exc

    def load(self, state_dict: StateDict, name: str = "checkpoint") -> ModelDescriptor:
        kwargs = self.hyperparameters(state_dict, name)
        return self._descriptor(build_and_load(self, kwargs, state_dict, name), kwargs)


# ----------------------------------------------------------------------------- loading weights strictly


def _mismatch_report(model: nn.Module, sd: StateDict) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(v.shape)}"
              for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape differences", shapes)):
        if items:
            shown = "; ".join(items[:8]) + (f"; ... ({len(items) - 8} more)" if len(items) > 8 else "")
            parts.append(f"{label} ({len(items)}): {shown}")
    return " | ".join(parts)


def check_finite(sd: StateDict, name: str = "checkpoint") -> None:
    """CheckpointError when a floating-point tensor holds NaN or infinite values."""
    import torch

    broken = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"{name}: {len(broken)} of {len(sd)} tensors hold NaN or infinite values (first: "
                              f"{broken[0]}); the file is damaged or comes from a diverged training run")


def build_and_load(arch: NetworkArchitecture, kwargs: dict[str, Any], sd: StateDict, name: str = "checkpoint"
                   ) -> nn.Module:
    """Build `arch` with `kwargs` and load `sd` strictly; any mismatch raises CheckpointError listing missing,
    unexpected and mis-shaped keys."""
    # Built on the CPU, not under torch.device("meta"): meta tensor ops run through torch's Python references,
    # whose first call imports torch._dynamo (1-3 s on a 2-core CPU, more than building the largest MambaIRv2).
    # The random initial values are then replaced by the checkpoint's tensors (assign=True, no copy).
    try:
        model = arch.build_module(**kwargs)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{name}: cannot build {arch.id}({kwargs}): {exc}") from exc
    report = _mismatch_report(model, sd)
    if report:
        raise CheckpointError(f"{name}: checkpoint does not match {arch.id}({kwargs}): {report}")
    check_finite(sd, name)
    model.load_state_dict(dict(sd), strict=True, assign=True)
    return model


# ----------------------------------------------------------------------------- the registry


class Registry:
    """Architectures by id. `REGISTRY` is sr4's; tests and plug-ins register into it (and unregister)."""

    def __init__(self) -> None:
        self._archs: dict[str, Architecture] = {}

    def register(self, arch: Architecture) -> Architecture:
        key = normalise(arch.id)
        if key in self._archs:
            raise ValueError(f"architecture {arch.id!r} is already registered")
        self._archs[key] = arch
        return arch

    def unregister(self, arch_id: str) -> None:
        self._archs.pop(normalise(arch_id), None)

    def __iter__(self) -> Iterator[Architecture]:
        return iter(list(self._archs.values()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise(name) in self._archs

    def ids(self) -> list[str]:
        return [a.id for a in self]

    def get(self, name: str) -> Architecture:
        try:
            return self._archs[normalise(name)]
        except KeyError:
            raise ConfigError(f"unknown upsampler architecture {name!r}; registered: {', '.join(self.ids())}"
                              ) from None

    def detect(self, state_dict: StateDict, name: str = "checkpoint") -> Architecture:
        """The architecture whose keys these are (sr4's own first, a foreign registry last); CheckpointError listing
        what was tried otherwise."""
        tried = sorted((a for a in self if a.loads_files), key=lambda a: a.detect_last)
        for arch in tried:
            if arch.detect(state_dict):
                return arch
        reasons: dict[str, list[str]] = {}
        for arch in tried:
            reasons.setdefault(arch.why_not(state_dict), []).append(arch.id)
        what = "; ".join(f"not a {' / '.join(ids)} checkpoint ({reason})" for reason, ids in reasons.items())
        hint = ", ".join(list(state_dict)[:5])
        raise CheckpointError(f"{name}: {what}; its first keys are: {hint}")

    def load(self, state_dict: StateDict, name: str = "checkpoint") -> ModelDescriptor:
        """Detect and load (strictly) the network of a state dict."""
        return self.detect(state_dict, name).load(state_dict, name)

    def describe(self, module: nn.Module) -> ModelDescriptor | None:
        """The descriptor of a module of a registered architecture; None for other modules."""
        for arch in self:
            found = arch.describe(module)
            if found is not None:
                return found
        return None


REGISTRY = Registry()


def load_file(path: str | os.PathLike[str], key: str | None = None) -> ModelDescriptor:
    """Read a weights file (`sr4.checkpoints.read_state_dict`; `key` picks a wrapper entry), detect its
    architecture and load it strictly, on the CPU in the file's dtype; the descriptor's label names the file."""
    sd = read_state_dict(path, key=key)
    descriptor = REGISTRY.load(sd, name=str(path))
    return dataclasses.replace(descriptor, label=f"the model {path}")
