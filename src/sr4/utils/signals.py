"""SIGINT and SIGTERM as one exception, so every command stops the same clean way.

Inside `stop_on_signals()` both signals raise `Interrupted` in the main thread (Python runs
signal handlers there). Code that writes files catches it, lets the write in progress finish or
removes its temporary file, reports, and returns `exit_code()`: 128 + the signal number, as a
shell reports a process that a signal ended (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that
    `except Exception` blocks that record per-file failures do not swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted` while the block runs (main thread only; elsewhere
    the block runs unchanged). The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_now(signum: int, frame: object) -> None:
    os._exit(128 + signum)


def exit_at_once_on_signals() -> None:
    """From now on SIGINT and SIGTERM end the process at once with 128 + N: for the interpreter's
    shutdown after a command, when nothing is left to clean up (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for sig in HANDLED:
            signal.signal(sig, _exit_now)
