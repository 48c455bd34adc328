"""Register sr4's MambaIRv2 architectures in spandrel as soon as a program imports spandrel, for hosts without a
plugin mechanism (chaiNNer) or when no code can be edited.

Put a file ``sr4-spandrel.pth`` holding the single line

    import sr4.integrations.spandrel_hook; sr4.integrations.spandrel_hook.activate()

into the host Python's site-packages (``python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"``).
Python runs it at start-up; it imports nothing heavy (no torch) and only waits for ``import spandrel``, after which
it calls :func:`sr4.integrations.spandrel.install`. Delete the file to undo.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

#: The line of ``sr4-spandrel.pth`` (as in this module's docstring).
PTH_LINE = "import sr4.integrations.spandrel_hook; sr4.integrations.spandrel_hook.activate()"


def _install() -> None:
    # Runs inside the host's `import spandrel`: a failure here must not take spandrel (and the host) down with it.
    try:
        from sr4.integrations.spandrel import install

        install()
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"sr4 could not register MambaIRv2 in spandrel ({type(exc).__name__}: {exc})",
                      RuntimeWarning, stacklevel=2)


class _Loader(importlib.abc.Loader):
    """Runs spandrel's own loader, then registers sr4's architectures in the freshly imported package."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def __getattr__(self, name: str):  # is_package, get_code, get_resource_reader...: spandrel's own loader's
        return getattr(self._inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._inner.exec_module(module)
        _install()


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the other finders locate ``spandrel`` and wraps the loader they return."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "spandrel":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the search below from finding this finder again
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


def activate() -> None:
    """Install sr4's architectures into spandrel now if it is imported already, else right after its import.
    Calling it again changes nothing."""
    if "spandrel" in sys.modules:
        _install()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
