"""What an uploaded file must be before sr4 reads it: an image by its content, within the limits.

The browser's file name is only ever shown (after `display_name`), never used as a path: uploads
are stored under names the server makes up. The type is sniffed from the first bytes, so a file
that merely ends in ".png" is refused unless it starts like one of the formats `sr4.image.io`
reads; the pixel limit is checked from the header before anything is decoded (decompression bombs).
"""

from __future__ import annotations

import re
import unicodedata

# (format, test on the first bytes) for the formats sr4.image.io.read_image accepts.
_SIGNATURES = (
    ("png", lambda h: h.startswith(b"\x89PNG\r\n\x1a\n")),
    ("jpg", lambda h: h.startswith(b"\xff\xd8\xff")),
    ("webp", lambda h: len(h) >= 12 and h.startswith(b"RIFF") and h[8:12] == b"WEBP"),
    ("tiff", lambda h: h.startswith((b"II*\x00", b"MM\x00*"))),
    ("bmp", lambda h: h.startswith(b"BM") and len(h) >= 14),
)
#: bytes needed by `sniff_image_type`.
SNIFF_BYTES = 16


class UploadError(ValueError):
    """An upload refused before or while reading it; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def sniff_image_type(head: bytes) -> str | None:
    """'png', 'jpg', 'webp', 'tiff' or 'bmp' from a file's first bytes; None for anything else."""
    for name, test in _SIGNATURES:
        if test(head):
            return name
    return None


def display_name(raw: str | None, fallback: str = "image") -> str:
    """A file name fit to show and to offer as a download name: no folders, no control characters,
    only letters, digits and ``._- ``, at most 80 characters. Never used to open a file."""
    text = unicodedata.normalize("NFKC", raw or "")
    text = re.split(r"[\\/]", text)[-1]
    text = "".join(ch if (ch.isalnum() or ch in "._- ") and ch.isprintable() else "_" for ch in text)
    text = text.strip(" .")[:80].strip(" .")
    return text or fallback


def stem(name: str) -> str:
    """`name` without its last suffix (for result file names)."""
    head, dot, _ = name.rpartition(".")
    return head if dot and head else name
