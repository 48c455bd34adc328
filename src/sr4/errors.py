"""Every error sr4 raises on purpose, under one base, `Sr4Error`.

An `Sr4Error` is a problem the user can act on (a file, an option, a missing package), and its
`str()` says which and what is wrong, so the command line prints it as one line (`sr4 CMD: message`)
instead of a traceback. Each class also derives from the builtin exception a caller would catch
without knowing sr4 (`ValueError` for bad values, `FileNotFoundError` for missing files, ...).

This module imports nothing heavy: every layer of sr4 may use it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class Sr4Error(Exception):
    """Base of the errors sr4 raises for a problem the user can fix; `str()` is a complete sentence."""


class ConfigError(Sr4Error, ValueError):
    """An option, a configuration key or a model argument is invalid; the message names it."""


class CheckpointError(Sr4Error, ValueError):
    """A weights file that cannot be read, is not of a known architecture, or does not fit the network."""


class WeightsError(CheckpointError):
    """A metric's weight file is missing, unreadable or does not fit the network."""


class ModelFolderError(Sr4Error, FileNotFoundError):
    """A TSD-SR / SNUCV model folder is missing files; the message lists all of them."""


class LoraError(Sr4Error, ValueError):
    """A LoRA file does not fit the model it is applied to."""


class ImageError(Sr4Error, ValueError):
    """An image file that cannot be read or written; `str()` starts with the path."""

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class NonFiniteOutputError(Sr4Error, RuntimeError):
    """The model produced NaN or infinite values for an image."""


class OutputExistsError(Sr4Error, FileExistsError):
    """The final name was taken (by another process or the user) and replacing was not allowed."""

    def __init__(self, target: str | os.PathLike[str]):
        self.target = Path(target)
        super().__init__(errno.EEXIST, "a file appeared under this name while it was being written; left alone",
                         str(target))

    def __str__(self) -> str:
        return f"{self.target}: a file appeared under this name while sr4 was writing it; left alone"


class NotWrittenBySr4Error(OutputExistsError):
    """A file sr4 did not write is at an output's name: `--overwrite` replaces only sr4's own outputs
    (`sr4.image.marker.written_by_sr4`)."""

    def __str__(self) -> str:
        return (f"output {self.target} exists and was not written by sr4; left alone (remove it yourself or "
                "choose another -o / --suffix)")


class MissingDependencyError(Sr4Error, ImportError):
    """An optional package is not installed; the message gives the one-line install command."""
