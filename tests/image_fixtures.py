"""Hand-made files for the data-safety tests: a CMYK ICC profile, zlib bombs, animations."""

from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def zlib_of_zeros(size: int) -> bytes:
    """A zlib stream inflating to `size` zero bytes (about size / 1000 bytes long)."""
    comp = zlib.compressobj(9)
    block = b"\0" * (1 << 20)
    parts = [comp.compress(block) for _ in range(size // len(block))]
    parts += [comp.compress(b"\0" * (size % len(block))), comp.flush()]
    return b"".join(parts)


def png_bomb(path: Path, width: int, height: int, inflated: int, depth: int = 16) -> Path:
    """An RGB PNG declaring width x height whose IDAT inflates to `inflated` bytes."""
    header = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib_of_zeros(inflated))
                     + png_chunk(b"IEND", b""))
    return path


def _s15(value: float) -> bytes:
    return struct.pack(">i", int(round(value * 65536)))


def _srgb_to_lab(rgb: list[float]) -> tuple[float, float, float]:
    c = np.asarray(rgb, float)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169],
                       [0.0139322, 0.0971045, 0.7141733]])  # sRGB -> XYZ (D50)
    xyz = to_xyz @ lin / np.array([0.9642, 1.0, 0.8249])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def cmyk_icc_profile() -> bytes:
    """A small valid ICC v2 CMYK output profile (one 2-point lut8 A2B0 to Lab), tinted so that
    converting through it differs clearly from Pillow's naive CMYK -> RGB."""
    clut = b""
    for c, m, y, k in itertools.product((0, 1), repeat=4):
        rgb = [(1 - c) * (1 - k) * 0.95 + 0.02, (1 - m) * (1 - k) * 0.9 + 0.03, (1 - y) * (1 - k) * 0.85 + 0.05]
        lab_l, lab_a, lab_b = _srgb_to_lab(rgb)
        clut += bytes([round(lab_l / 100 * 255), round(lab_a + 128), round(lab_b + 128)])
    ramp = bytes(range(256))
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    lut = b"mft1" + b"\0" * 4 + bytes([4, 3, 2, 0]) + identity + ramp * 4 + clut + ramp * 3
    white = b"XYZ " + b"\0" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"A2B0", lut), (b"wtpt", white)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + b"\0" * 4 + bytes([2, 0x10, 0, 0]) + b"prtrCMYKLab "
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + _s15(0.9642) + _s15(1.0) + _s15(0.8249))
    return header + b"\0" * (128 - len(header)) + table + data


def animation(path: Path, frames: list[np.ndarray], durations: list[int] | None = None, loop: int | None = 0) -> Path:
    """Save frames (HxWxC uint8) as an animated PNG / WebP / GIF or a multi-page TIFF (by suffix)."""
    images = [Image.fromarray(f) for f in frames]
    kwargs: dict = {"save_all": True, "append_images": images[1:]}
    if path.suffix.lower() not in (".tif", ".tiff"):
        kwargs["duration"] = durations or [100] * len(frames)
        if loop is not None:
            kwargs["loop"] = loop
    if path.suffix.lower() == ".webp":
        kwargs["lossless"] = True
    images[0].save(path, **kwargs)
    return path
