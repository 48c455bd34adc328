"""The progress callback every long step takes: ``progress(done, total)``, e.g. tiles done of the image's tiles."""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int], None]
