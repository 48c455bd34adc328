"""16-bit colour TIFF (RGB, RGBA, gray+alpha) through tifffile, every page, memory bounded.

Pillow has no 16-bit colour mode, so these files are read and written with tifffile. Without
the optional `imagecodecs` package tifffile inflates a compressed segment without limit, so a
segment that would inflate beyond the size the page declares is refused before tifffile decodes
it (deflate and PackBits are measured here; other compressions need imagecodecs, whose decoders
stop at the declared size).
"""

from __future__ import annotations

import zlib
from typing import Any, BinaryIO

import numba
import numpy as np

_NONE, _PACKBITS, _DEFLATE = 1, 32773, (8, 32946)


class TIFFError(ValueError):
    """A 16-bit TIFF that cannot be read or written (the caller adds the file name)."""


def is_16bit_colour(img: Any) -> bool:
    """Whether a Pillow TIFF image (its current page) holds more than one 16-bit sample per pixel."""
    bits = img.tag_v2.get(258, (8,)) if hasattr(img, "tag_v2") else (8,)
    bits = bits if isinstance(bits, tuple) else (bits,)
    return len(bits) > 1 and max(bits) == 16


def _tifffile():
    try:
        import tifffile
    except ImportError:
        raise TIFFError("16-bit colour TIFF needs the 'tifffile' package (pip install tifffile)") from None
    return tifffile


def _has_imagecodecs() -> bool:
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return False
    return True


def read(path: Any, pages: int) -> tuple[list[np.ndarray], bytes | None, int]:
    """The first `pages` pages as HxWxC arrays (uint16, or uint8 for 8-bit pages), the ICC
    profile and the EXIF orientation of page 0."""
    tifffile = _tifffile()
    frames: list[np.ndarray] = []
    icc, orientation = None, 1
    with tifffile.TiffFile(path) as tif:
        for index in range(pages):
            page = tif.pages[index]
            _check_segments(tif.filehandle, page)
            pixels = page.asarray()
            if index == 0:
                icc_tag, orient_tag = page.tags.get(34675), page.tags.get(274)
                icc = bytes(icc_tag.value) if icc_tag is not None else None
                orientation = int(orient_tag.value) if orient_tag is not None else 1
            frames.append(_layout(pixels))
    return frames, icc, orientation


def page_sizes(path: Any) -> list[tuple[int, int]]:
    """(width, height) of every page, from the headers (no pixel data is read)."""
    tifffile = _tifffile()
    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise TIFFError("TIFF without pages")
        return [(int(page.imagewidth), int(page.imagelength)) for page in tif.pages]


def _layout(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[0] in (2, 3, 4) and pixels.shape[2] not in (2, 3, 4):
        pixels = pixels.transpose(1, 2, 0)  # planar configuration
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise TIFFError(f"unsupported TIFF page layout {pixels.shape}")
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize == 2:
        return pixels.astype(np.uint16)
    if pixels.dtype == np.uint8:
        return pixels
    raise TIFFError(f"unsupported TIFF sample type {pixels.dtype} (8- and 16-bit integers only)")


def _check_segments(fh: BinaryIO, page: Any) -> None:
    compression = int(page.compression)
    if compression == _NONE or _has_imagecodecs():
        return
    if compression != _PACKBITS and compression not in _DEFLATE:
        raise TIFFError(f"16-bit colour TIFF compressed with {page.compression.name}: reading it needs the "
                        "'imagecodecs' package (pip install imagecodecs), or save it uncompressed or with deflate")
    cap = int(np.prod(page.chunks)) * page.dtype.itemsize  # decoded bytes of one strip or tile
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        fh.seek(offset)
        data = fh.read(count)
        if compression == _PACKBITS:
            size = _packbits_size(np.frombuffer(data, np.uint8), cap)
        else:
            size = _inflated_size(data, cap)
        if size > cap:
            raise TIFFError(f"a compressed segment inflates beyond the {cap:,} bytes the page declares "
                            "(decompression bomb); refused")


def _inflated_size(data: bytes, cap: int) -> int:
    """Bytes `data` inflates to, counted up to cap + 1 (so memory stays at the declared size)."""
    try:
        return len(zlib.decompressobj().decompress(data, cap + 1))
    except zlib.error:
        return 0  # tifffile reports the damage


@numba.njit(cache=True)
def _packbits_size(data: np.ndarray, cap: int) -> int:  # pragma: no cover - jitted
    i, n = 0, 0
    while i < data.size and n <= cap:
        code = data[i]
        i += 1
        if code < 128:  # code + 1 literal bytes
            n += code + 1
            i += code + 1
        elif code > 128:  # the next byte, 257 - code times
            n += 257 - code
            i += 1
    return n


def write(fh: BinaryIO, frames: list[np.ndarray], icc: bytes | None, software: str | None = None) -> None:
    """Write HxWxC pages (uint16 or uint8, each with its own mode) as one TIFF, zlib-compressed, with
    `software` as every page's Software tag (tifffile would name itself)."""
    tifffile = _tifffile()
    tags = [(34675, "B", len(icc), icc, True)] if icc else None
    with tifffile.TiffWriter(fh) as tif:
        for pixels in frames:
            extra = {"extrasamples": ["unassalpha"]} if pixels.shape[2] in (2, 4) else {}
            photometric = "minisblack" if pixels.shape[2] <= 2 else "rgb"
            data = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
            tif.write(data, photometric=photometric, compression="zlib", extratags=tags, software=software,
                      **extra)
