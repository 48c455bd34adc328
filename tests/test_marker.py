"""sr4's mark in every image it writes (the Software field) and `written_by_sr4`, which reads it back."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from image_fixtures import png_chunk
from PIL import Image, PngImagePlugin

from sr4 import __version__
from sr4.image.files import OUTPUT_SUFFIXES
from sr4.image.io import WRITE_FORMATS, Animation, ImageData, read_image, write_image
from sr4.image.marker import SOFTWARE, is_sr4_software, written_by_sr4

RNG = np.random.default_rng(11)
_SOFTWARE = 0x0131


def _pixels(bits: int, channels: int = 3, h: int = 9, w: int = 11) -> np.ndarray:
    peak = 255 if bits == 8 else 65535
    return RNG.integers(0, peak + 1, (h, w, channels)).astype(np.uint8 if bits == 8 else np.uint16)


def _software_fields(path: Path) -> list[str]:
    """The Software field of every frame/page, read with Pillow or tifffile (not with sr4's reader)."""
    with Image.open(path) as img:
        fmt = img.format
        if fmt == "PNG":
            return [img.info["Software"]]
        if fmt in ("JPEG", "WEBP"):
            return [img.getexif()[_SOFTWARE]]
        if fmt == "GIF":
            return [img.info["comment"].decode()]
        if fmt == "BMP":
            return [path.read_bytes()[6:10].decode("latin-1")]
    with tifffile.TiffFile(path) as tif:
        return [page.tags[305].value for page in tif.pages]


def test_the_mark_names_sr4_and_its_version() -> None:
    assert SOFTWARE == f"sr4 {__version__}"
    assert is_sr4_software(SOFTWARE) and is_sr4_software(b"sr4 9.9.9\0") and is_sr4_software("sr4")
    assert not is_sr4_software("sr4x 1.0") and not is_sr4_software("GIMP 2.10") and not is_sr4_software("")


_CASES = [(ext, bits, channels, frames) for ext in sorted(WRITE_FORMATS) for bits, channels, frames in
          [(8, 3, 1), (16, 3, 1), (16, 1, 1), (8, 4, 3), (16, 4, 3)]
          if frames == 1 or WRITE_FORMATS[ext] in ("PNG", "WEBP", "GIF", "TIFF")]


@pytest.mark.parametrize("ext,bits,channels,frames", _CASES)
def test_every_output_format_carries_the_mark(tmp_path: Path, ext: str, bits: int, channels: int,
                                              frames: int) -> None:
    frame_list = [_pixels(bits, channels) for _ in range(frames)]
    data = ImageData(pixels=frame_list[0], animation=Animation(frame_list, [80] * frames) if frames > 1 else None)
    path = tmp_path / f"out{ext}"
    write_image(path, data)
    fields = _software_fields(path)
    expected = "sr4\0" if ext == ".bmp" else SOFTWARE
    assert fields and all(field == expected for field in fields), fields
    assert written_by_sr4(path)
    assert read_image(path, frames="all").frame_count == frames  # the mark does not disturb reading


def test_every_output_suffix_is_covered() -> None:
    assert set(OUTPUT_SUFFIXES.values()) <= {ext for ext, *_ in _CASES}


def test_carried_over_exif_gets_sr4_as_its_software(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[_SOFTWARE], exif[0x010F] = "GIMP 2.10", "Canon"  # Software, Make
    for ext in ("jpg", "png", "webp"):
        src = tmp_path / f"camera.{ext}"
        Image.fromarray(_pixels(8)).save(src, exif=exif.tobytes())
        assert not written_by_sr4(src)
        data = read_image(src)
        for bits in (8, 16):
            if bits == 16:
                if ext != "png":
                    continue
                data.pixels = data.pixels.astype(np.uint16) * 257  # sr4's own 16-bit PNG writer
            out = tmp_path / f"out{bits}.{ext}"
            write_image(out, data)
            with Image.open(out) as img:
                written = img.getexif()
            assert (written[_SOFTWARE], written[0x010F]) == (SOFTWARE, "Canon")
            assert written_by_sr4(out)


def _other_programs_files(folder: Path) -> list[Path]:
    img = Image.fromarray(_pixels(8))
    exif = Image.Exif()
    exif[_SOFTWARE] = "GIMP 2.10"
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "GIMP 2.10")
    paths = []
    for ext in ("png", "jpg", "webp", "tiff", "gif", "bmp"):
        plain = folder / f"plain.{ext}"
        img.save(plain)
        paths.append(plain)
    for name, kwargs in [("gimp.jpg", {"exif": exif.tobytes()}), ("gimp.webp", {"exif": exif.tobytes()}),
                         ("gimp.png", {"pnginfo": info}), ("gimp.tiff", {"software": "GIMP 2.10"}),
                         ("comment.gif", {"comment": "made with love"})]:
        img.save(folder / name, **kwargs)
        paths.append(folder / name)
    tifffile.imwrite(folder / "tifffile.tiff", _pixels(16), photometric="rgb")
    paths.append(folder / "tifffile.tiff")
    return paths


def test_files_of_other_programs_are_not_sr4s(tmp_path: Path) -> None:
    for path in _other_programs_files(tmp_path):
        assert not written_by_sr4(path), path


def test_damaged_odd_and_missing_files_are_not_sr4s(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    write_image(good, _pixels(8))
    data = good.read_bytes()
    cases = {"empty.png": b"", "garbage.png": os.urandom(4096), "text.png": b"not an image at all",
             "cut-in-header.png": data[:30], "bad-tiff.tiff": b"II*\0\xff\xff\xff\xff", "bad-jpeg.jpg": b"\xff\xd8\xff"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert not written_by_sr4(tmp_path / name), name
    link = tmp_path / "link.png"
    link.symlink_to(good)  # sr4 never writes links: replacing one would lose it
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert written_by_sr4(good)
    assert not written_by_sr4(link) and not written_by_sr4(folder) and not written_by_sr4(tmp_path / "none.png")


def test_the_mark_is_read_from_the_headers_without_decoding(tmp_path: Path) -> None:
    # A PNG declaring 60000 x 60000 pixels (far past any pixel limit) with a tiny damaged image data chunk:
    # decoding it would fail, reading the mark does not need to.
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"tEXt", b"Software\0sr4 0.1")
                     + png_chunk(b"IDAT", b"\0" * 16) + png_chunk(b"IEND", b""))
    assert written_by_sr4(path)
    # A metadata chunk declaring 4 GiB in a 100-byte file: refused from its length, nothing read.
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
                     + struct.pack(">I4s", 0xFFFFFFF0, b"tEXt") + b"Software\0sr4 0.1")
    assert not written_by_sr4(path)
