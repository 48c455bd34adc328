"""The mark sr4 leaves in every image it writes, and `written_by_sr4`, which reads it back cheaply.

`sr4 upscale --overwrite` replaces only files that carry this mark, so a user's photo that happens
to sit under an output's name is never replaced. The mark is the standard "Software" field, set
to ``sr4 <version>`` (any version counts):

* PNG: a ``tEXt`` chunk ``Software`` before the image data (also in sr4's 16-bit PNG writer);
* JPEG, WebP: EXIF tag 0x0131 Software (an input's EXIF that is carried over gets sr4's instead);
* TIFF: tag 305 Software on every page (Pillow's and sr4's 16-bit writer);
* GIF: a comment extension before the first frame;
* BMP (written by ``--ext keep`` for BMP inputs; the format has no metadata): the four bytes of
  the file header's application-defined "reserved" fields hold ``sr4\\0``.

Reading it walks the format's headers and metadata only (chunks, segments and IFD entries,
never the pixels), with bounded reads and a bounded number of steps, so a huge or hostile
file costs at most a few megabytes of reading. Anything unreadable, corrupt, not a regular
file, or in another format is "not written by sr4".
"""

from __future__ import annotations

import io
import os
import stat
import struct
from typing import BinaryIO

from PIL import Image

from sr4 import __version__
from sr4.image.png16 import MAX_METADATA_BYTES, SIGNATURE

SOFTWARE = f"sr4 {__version__}"
#: what sr4 writes into a BMP header's reserved fields (bytes 6..10).
BMP_MARK = b"sr4\0"
_EXIF_SOFTWARE = 0x0131
# Chunks, segments, IFD entries or blocks walked before a file is given up on as "not sr4's".
_MAX_STEPS = 65536


def is_sr4_software(value: bytes | str) -> bool:
    """Whether a Software field names sr4 (any version)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.rstrip("\0").strip()
    return text == "sr4" or text.startswith("sr4 ")


def exif_with_software(exif: bytes | None) -> bytes:
    """EXIF bytes carrying sr4's Software tag: `exif` (an input's, kept otherwise unchanged) or a new block."""
    block = Image.Exif()
    if exif:
        try:
            block.load(exif)
        except Exception:  # a damaged block cannot be carried over; the mark still must be
            block = Image.Exif()
    block[_EXIF_SOFTWARE] = SOFTWARE
    return block.tobytes()


def written_by_sr4(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file (not a link) whose Software field says sr4 wrote it.

    Reads headers and metadata only, never pixels; False for anything unreadable or corrupt."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return False
            head = fh.read(16)
            reader = _reader_for(head)
            if reader is None:
                return False
            fh.seek(0)
            value = reader(fh)
    except (OSError, ValueError, struct.error, IndexError):
        return False
    return value is not None and is_sr4_software(value)


def _reader_for(head: bytes):  # noqa: ANN202 - one of the readers below
    if head.startswith(SIGNATURE):
        return _png_software
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg_software
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_software
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return _tiff_software
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_software
    if head[:2] == b"BM" and len(head) >= 10:
        return lambda fh: b"sr4" if head[6:10] == BMP_MARK else None
    return None


def _png_software(fh: BinaryIO) -> bytes | None:
    fh.seek(len(SIGNATURE))
    for _ in range(_MAX_STEPS):
        head = fh.read(8)
        if len(head) < 8:
            return None
        length, kind = struct.unpack(">I4s", head)
        if kind in (b"IDAT", b"IEND"):
            return None  # sr4 writes its mark before the image data
        if kind in (b"tEXt", b"iTXt") and length <= MAX_METADATA_BYTES:
            key, _, text = fh.read(length).partition(b"\0")
            if key == b"Software":
                if kind == b"tEXt":
                    return text
                # iTXt: compression flag, method, language tag \0, translated keyword \0, text
                if text[:1] != b"\0":
                    return None  # compressed: sr4 never writes that
                parts = text[2:].split(b"\0", 2)
                return parts[2] if len(parts) == 3 else None
            fh.seek(4, io.SEEK_CUR)
        else:
            fh.seek(length + 4, io.SEEK_CUR)
    return None


def _jpeg_software(fh: BinaryIO) -> bytes | None:
    fh.seek(2)
    for _ in range(_MAX_STEPS):
        marker = fh.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        if kind == 0xFF:  # fill byte
            fh.seek(-1, io.SEEK_CUR)
            continue
        if kind in (0xD9, 0xDA):
            return None  # end of image / start of scan: the metadata segments are behind
        if 0xD0 <= kind <= 0xD7 or kind == 0x01:
            continue  # markers without a length
        length = struct.unpack(">H", fh.read(2))[0]
        if kind == 0xE1:
            body = fh.read(length - 2)
            if body.startswith(b"Exif\0\0"):
                return _tiff_software(io.BytesIO(body[6:]))
        else:
            fh.seek(length - 2, io.SEEK_CUR)
    return None


def _webp_software(fh: BinaryIO) -> bytes | None:
    fh.seek(12)
    for _ in range(_MAX_STEPS):
        head = fh.read(8)
        if len(head) < 8:
            return None
        kind, length = struct.unpack("<4sI", head)
        if kind == b"EXIF":  # after the image data: the frames are skipped by seeking, never read
            if length > MAX_METADATA_BYTES:
                return None
            body = fh.read(length)
            return _tiff_software(io.BytesIO(body[6:] if body.startswith(b"Exif\0\0") else body))
        fh.seek(length + (length & 1), io.SEEK_CUR)
    return None


def _tiff_software(fh: BinaryIO) -> bytes | None:
    """Tag 305 of the first IFD of a TIFF file or an EXIF block (classic TIFF or BigTIFF)."""
    fh.seek(0)
    head = fh.read(16)
    order = {b"II": "<", b"MM": ">"}[head[:2]]
    magic = struct.unpack(order + "H", head[2:4])[0]
    if magic == 42:
        ifd, count_fmt, entry_fmt, offset_fmt = struct.unpack(order + "I", head[4:8])[0], "H", "HHI4s", "I"
    elif magic == 43:
        ifd, count_fmt, entry_fmt, offset_fmt = struct.unpack(order + "Q", head[8:16])[0], "Q", "HHQ8s", "Q"
    else:
        return None
    fh.seek(ifd)
    raw_count = fh.read(struct.calcsize(count_fmt))
    count = min(struct.unpack(order + count_fmt, raw_count)[0], _MAX_STEPS)
    size = struct.calcsize(order + entry_fmt)
    entries = fh.read(count * size)
    for index in range(len(entries) // size):
        tag, kind, n, value = struct.unpack_from(order + entry_fmt, entries, index * size)
        if tag != 305:
            continue
        if kind != 2:  # ASCII
            return None
        if n > len(value):
            fh.seek(struct.unpack(order + offset_fmt, value)[0])
            value = fh.read(min(n, 256))
        return value[:n].split(b"\0")[0]
    return None


def _gif_software(fh: BinaryIO) -> bytes | None:
    head = fh.read(13)  # signature and logical screen descriptor
    if head[10] & 0x80:
        fh.seek(3 << ((head[10] & 7) + 1), io.SEEK_CUR)  # global colour table
    steps = 0
    while steps < _MAX_STEPS:
        if fh.read(1) != b"!":
            return None  # the first frame (or the end): sr4's comment comes before it
        label = fh.read(1)
        text = bytearray()
        while steps < _MAX_STEPS:  # data sub-blocks up to the empty one
            steps += 1
            size = fh.read(1)
            if not size:
                return None
            if size[0] == 0:
                break
            if label == b"\xfe" and len(text) < 256:
                text += fh.read(size[0])
            else:
                fh.seek(size[0], io.SEEK_CUR)
        if label == b"\xfe":
            return bytes(text)
    return None
