"""Which files are images to sr4: one list of suffixes and one folder listing for every command.

Hidden files (a leading dot: editor and OS metadata such as macOS ``._photo.jpg``) and sr4's own
temporary files (`sr4.utils.atomic.is_temp_name`) are never listed, so an interrupted run's
leftovers are never taken for inputs or scored as results.
"""

from __future__ import annotations

import os
from pathlib import Path

from sr4.utils.atomic import is_temp_name

#: suffixes sr4 reads (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
#: what the official SNUCV harness globs (*.png, *.jpg, *.jpeg in any letter case): the NTIRE entry lists only these.
HARNESS_SUFFIXES = (".png", ".jpg", ".jpeg")
#: `--ext` value -> output suffix ("keep" keeps the input's).
OUTPUT_SUFFIXES = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff", "gif": ".gif"}


def describe_suffixes(suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> str:
    """The suffixes for a message: "png, jpg, ..."."""
    return ", ".join(s.lstrip(".") for s in suffixes)


def is_listed_image(path: Path, root: Path | None = None, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> bool:
    """A regular file with an image suffix, not hidden (no hidden folder below `root` either), not an sr4 temp."""
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    return (path.suffix.lower() in suffixes and not is_temp_name(path.name)
            and not any(part.startswith(".") for part in parts) and path.is_file())


def list_images(folder: str | os.PathLike, *, recursive: bool = False,
                suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Sorted image files of `folder` (and its sub-folders when `recursive`) whose suffix is one of `suffixes`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if is_listed_image(p, folder, suffixes))
