"""sr4 without spandrel installed (simulated by blocking the import): what needs the extra says so."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_the_spandrel_integration_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # `import spandrel` now raises ImportError
    monkeypatch.delitem(sys.modules, "sr4.integrations.spandrel", raising=False)
    with pytest.raises(ImportError, match=r'pip install "sr4\[spandrel\]"'):
        importlib.import_module("sr4.integrations.spandrel")
