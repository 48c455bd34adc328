"""16-bit colour PNG (RGB, RGBA, gray+alpha) reading and writing.

Pillow has no 16-bit colour mode and silently reduces such PNGs to 8 bits, so sr4 decodes and
encodes them itself: zlib + the five PNG row filters (RFC 2083), non-interlaced only.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import BinaryIO

import numba
import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour type -> channels, for the types this module handles at 16 bits.
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


class PNGError(ValueError):
    """Malformed or unsupported PNG data (the caller adds the file name)."""


def read_header(head: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) from the first 33 bytes, or None if not a PNG."""
    if len(head) < 33 or not head.startswith(SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return width, height, depth, ctype, interlace


#: largest ancillary chunk (ICC profile, EXIF) the decoder keeps, compressed or inflated.
MAX_METADATA_BYTES = 16 << 20


def decode(data: bytes | BinaryIO) -> tuple[np.ndarray, bytes | None, bytes | None]:
    """Decode a 16-bit PNG (bytes or a binary file) -> (HxWxC uint16, ICC profile or None, raw EXIF or None).

    Memory stays bounded by the size the header declares: the file is read chunk by chunk and
    the image data is inflated only up to the declared size (a zlib bomb stops there), the ICC
    and EXIF chunks up to `MAX_METADATA_BYTES`.
    """
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    header = read_header(fh.read(33))  # signature, IHDR and its CRC
    if header is None:
        raise PNGError("not a PNG file")
    width, height, depth, ctype, interlace = header
    if depth != 16 or ctype not in CHANNELS:
        raise PNGError(f"unsupported PNG bit depth {depth} / colour type {ctype} for the 16-bit decoder")
    if interlace:
        raise PNGError("interlaced 16-bit PNG is not supported; save it non-interlaced")
    channels = CHANNELS[ctype]
    stride = width * channels * 2
    expected = height * (stride + 1)
    raw = bytearray()
    inflater = zlib.decompressobj()
    icc, exif, ended = None, None, False
    while True:
        head = fh.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IDAT":
            _inflate_chunk(fh, length, inflater, raw, expected)
        elif kind == b"acTL":
            body = fh.read(min(length, 8))
            fh.seek(length - len(body), io.SEEK_CUR)
            frames = struct.unpack(">I", body[:4])[0] if len(body) >= 4 else 0
            if frames > 1:
                raise PNGError(f"animated 16-bit PNG ({frames} frames) is not supported; "
                               "convert it to 8 bits or to a multi-page TIFF")
        elif kind in (b"iCCP", b"eXIf") and length <= MAX_METADATA_BYTES:
            body = fh.read(length)
            if len(body) < length:
                break
            if kind == b"eXIf":
                exif = body
            else:
                icc = _inflate_profile(body)
        elif kind == b"IEND":
            ended = True
            break
        else:
            fh.seek(length, io.SEEK_CUR)
        fh.seek(4, io.SEEK_CUR)  # CRC
    if len(raw) < expected or not ended:
        raise PNGError(f"truncated image data ({len(raw)} of {expected} bytes decoded)")
    rows = np.frombuffer(raw, dtype=np.uint8, count=expected).reshape(height, stride + 1)
    filters = np.ascontiguousarray(rows[:, 0])
    if filters.max(initial=0) > 4:
        raise PNGError("corrupt image data (unknown row filter)")
    pixels = _unfilter(np.ascontiguousarray(rows[:, 1:]), filters, channels * 2)
    return pixels.view(">u2").reshape(height, width, channels).astype(np.uint16), icc, exif


def _inflate_chunk(fh: BinaryIO, length: int, inflater, raw: bytearray, expected: int) -> None:  # noqa: ANN001
    """Feed one IDAT chunk to `inflater`, never producing more than `expected` bytes in all."""
    left = length
    while left > 0:
        piece = fh.read(min(left, 1 << 20))
        if not piece:
            return
        left -= len(piece)
        if len(raw) >= expected:
            continue  # the image is complete; extra compressed data is read past, never inflated
        try:
            raw += inflater.decompress(piece, expected - len(raw))
            # Input that did not fit stays in unconsumed_tail; feed it while room remains.
            while inflater.unconsumed_tail and len(raw) < expected:
                raw += inflater.decompress(inflater.unconsumed_tail, expected - len(raw))
        except zlib.error as exc:
            raise PNGError(f"corrupt image data ({exc})") from None


def _inflate_profile(body: bytes) -> bytes | None:
    name_end = body.find(b"\0")
    inflater = zlib.decompressobj()
    try:
        profile = inflater.decompress(body[name_end + 2:], MAX_METADATA_BYTES)
    except zlib.error:
        return None  # a broken profile is dropped, the pixels are still good
    if inflater.unconsumed_tail:
        return None  # larger than any real profile: dropped rather than inflated without bound
    return profile


@numba.njit(cache=True)
def _unfilter(rows: np.ndarray, filters: np.ndarray, bpp: int) -> np.ndarray:  # pragma: no cover - jitted
    out = np.empty_like(rows)
    height, stride = rows.shape
    for y in range(height):
        f = filters[y]
        for i in range(stride):
            a = np.int32(out[y, i - bpp]) if i >= bpp else np.int32(0)
            b = np.int32(out[y - 1, i]) if y > 0 else np.int32(0)
            c = np.int32(out[y - 1, i - bpp]) if (y > 0 and i >= bpp) else np.int32(0)
            if f == 0:
                pred = np.int32(0)
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
            out[y, i] = (np.int32(rows[y, i]) + pred) & 0xFF
    return out


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def encode(pixels: np.ndarray, icc_profile: bytes | None = None, level: int = 6, exif: bytes | None = None,
           software: str | None = None) -> bytes:
    """HxWxC uint16 (C in 1..4) -> 16-bit PNG bytes, every row with the 'Up' filter; `software` goes into a
    ``tEXt`` chunk ``Software`` before the image data."""
    if pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected HxWxC uint16 with C in 1..4, got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = np.ascontiguousarray(pixels.astype(">u2")).view(np.uint8).reshape(height, width * channels * 2)
    up = raw.copy()
    up[1:] -= raw[:-1]  # uint8 arithmetic wraps modulo 256, as the filter requires
    rows = np.concatenate([np.full((height, 1), 2, np.uint8), up], axis=1)
    parts = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, ctype, 0, 0, 0))]
    if icc_profile:
        parts.append(_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc_profile)))
    if software:
        parts.append(_chunk(b"tEXt", b"Software\0" + software.encode("latin-1")))
    if exif:
        parts.append(_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif))
    parts += [_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)), _chunk(b"IEND", b"")]
    return b"".join(parts)
