"""Image reading/writing: formats, modes, 16 bits, EXIF orientation, ICC, and every bad-input error."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from sr4.image import png16
from sr4.image.io import ImageData, ImageError, from_pil, read_image, to_pil, write_image

RNG = np.random.default_rng(0)


def _rgb(h: int = 12, w: int = 17, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_lossless_roundtrip(tmp_path: Path, ext: str, channels: int) -> None:
    pixels = _rgb(c=channels)
    write_image(tmp_path / f"a{ext}", pixels)
    back = read_image(tmp_path / f"a{ext}")
    assert back.pixels.dtype == np.uint8
    if ext == ".bmp" and channels in (2, 4):
        pixels = pixels[:, :, :-1]  # BMP has no alpha: dropped on write
    np.testing.assert_array_equal(back.pixels, pixels)


@pytest.mark.parametrize("ext,tol", [(".jpg", 40), (".webp", 40)])
def test_lossy_roundtrip(tmp_path: Path, ext: str, tol: int) -> None:
    smooth = np.clip(np.add.outer(np.arange(32) * 4, np.arange(40) * 3), 0, 255).astype(np.uint8)
    pixels = np.stack([smooth, smooth[::-1], 255 - smooth], axis=2)
    write_image(tmp_path / f"a{ext}", pixels, quality=95)
    back = read_image(tmp_path / f"a{ext}").pixels
    assert back.shape == pixels.shape
    assert np.abs(back.astype(int) - pixels).mean() < 3 and np.abs(back.astype(int) - pixels).max() < tol


def test_jpeg_drops_alpha_and_16bit_becomes_8bit(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 65536, (8, 9, 4), dtype=np.uint16)
    write_image(tmp_path / "a.jpg", pixels)
    back = read_image(tmp_path / "a.jpg").pixels
    assert back.shape == (8, 9, 3) and back.dtype == np.uint8


def _png16_by_hand(pixels: np.ndarray, filters: list[int]) -> bytes:
    """Independent 16-bit PNG encoder using every filter type (plain Python, tiny images only)."""
    h, w, c = pixels.shape
    bpp = 2 * c
    raw = [list(pixels[y].astype(">u2").tobytes()) for y in range(h)]
    out = bytearray()
    for y in range(h):
        f = filters[y % len(filters)]
        out.append(f)
        for i in range(len(raw[y])):
            a = raw[y][i - bpp] if i >= bpp else 0
            b = raw[y - 1][i] if y else 0
            cc = raw[y - 1][i - bpp] if y and i >= bpp else 0
            p = a + b - cc
            pred = [0, a, b, (a + b) // 2,
                    a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - cc) else (b if abs(p - b) <= abs(p - cc)
                                                                                    else cc)][f]
            out.append((raw[y][i] - pred) % 256)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (png16.SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png16_decoder_handles_every_filter(tmp_path: Path, channels: int) -> None:
    pixels = RNG.integers(0, 65536, (7, 6, channels), dtype=np.uint16)
    path = tmp_path / "a.png"
    path.write_bytes(_png16_by_hand(pixels, [0, 1, 2, 3, 4]))
    data = read_image(path)
    assert data.pixels.dtype == np.uint16
    np.testing.assert_array_equal(data.pixels, pixels)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_written_stays_16bit_and_pillow_agrees(tmp_path: Path, channels: int) -> None:
    pixels = RNG.integers(0, 65536, (9, 11, channels), dtype=np.uint16)
    icc = _srgb_icc()
    write_image(tmp_path / "a.png", ImageData(pixels=pixels, icc_profile=icc))
    back = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(back.pixels, pixels)
    # An RGB profile describes colour pixels only: gray outputs go without it.
    assert back.icc_profile == (icc if channels >= 3 else None)
    with Image.open(tmp_path / "a.png") as im:  # Pillow reads the file too (16-bit gray, else reduced to 8)
        assert im.info.get("icc_profile") == (icc if channels >= 3 else None)
        arr = np.asarray(im if channels == 1 else im.convert({2: "LA", 3: "RGB", 4: "RGBA"}[channels]))
        if channels == 1:
            np.testing.assert_array_equal(arr, pixels[:, :, 0])
        else:
            np.testing.assert_array_equal(arr.reshape(pixels.shape), (pixels >> 8).astype(np.uint8))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_tiff16_roundtrip(tmp_path: Path, channels: int) -> None:
    pytest.importorskip("tifffile")
    pixels = RNG.integers(0, 65536, (9, 11, channels), dtype=np.uint16)
    write_image(tmp_path / "a.tif", pixels)
    back = read_image(tmp_path / "a.tif").pixels
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, pixels)


def test_tiff16_gray_alpha_pages_pillow_cannot_open(tmp_path: Path) -> None:
    # Pillow does not identify 16-bit gray+alpha TIFF; sr4 writes it for 16-bit LA inputs and must read it back,
    # with the same page and pixel-limit rules as any other file.
    pytest.importorskip("tifffile")
    from sr4.image.io import Animation

    pages = [RNG.integers(0, 65536, (7, 5, 2), dtype=np.uint16) for _ in range(2)]
    write_image(tmp_path / "p.tif", ImageData(pages[0], animation=Animation(pages, [], 0)))
    with pytest.raises(UnidentifiedImageError):
        Image.open(tmp_path / "p.tif")
    with pytest.raises(ImageError, match="2 pages"):
        read_image(tmp_path / "p.tif")
    with pytest.raises(ImageError, match="exceeds the limit"):
        read_image(tmp_path / "p.tif", frames="all", max_pixels=69)
    data = read_image(tmp_path / "p.tif", frames="all", max_pixels=70)
    assert data.animation is not None
    for got, want in zip(data.animation.frames, pages, strict=True):
        np.testing.assert_array_equal(got, want)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + bytes(12))
    with pytest.raises(ImageError, match="bad.tif"):
        read_image(tmp_path / "bad.tif")


def test_tiff16_from_tifffile(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    pixels = RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "b.tiff", pixels, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "b.tiff").pixels, pixels)


def test_gray16_png_via_pillow(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "g.png")
    data = read_image(tmp_path / "g.png")
    assert data.mode == "L" and data.bits == 16
    np.testing.assert_array_equal(data.pixels[:, :, 0], pixels)


def test_palette_modes(tmp_path: Path) -> None:
    rgb = Image.fromarray(_rgb(10, 10))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    data = read_image(tmp_path / "p.png")
    assert data.mode == "RGB"
    np.testing.assert_array_equal(data.pixels, np.asarray(pal.convert("RGB")))
    pal.save(tmp_path / "pt.png", transparency=3)
    data = read_image(tmp_path / "pt.png")
    assert data.mode == "RGBA"
    idx = np.asarray(pal)
    np.testing.assert_array_equal(data.pixels[:, :, 3] == 0, idx == 3)


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_cmyk_becomes_rgb(tmp_path: Path, ext: str) -> None:
    cmyk = Image.fromarray(_rgb(8, 8)).convert("CMYK")
    cmyk.save(tmp_path / f"c{ext}")
    data = read_image(tmp_path / f"c{ext}")
    assert data.mode == "RGB"
    with Image.open(tmp_path / f"c{ext}") as im:
        np.testing.assert_array_equal(data.pixels, np.asarray(im.convert("RGB")))


def test_gray_and_bilevel_and_la(tmp_path: Path) -> None:
    Image.fromarray(_rgb(5, 6, 1)[:, :, 0]).convert("1").save(tmp_path / "b.bmp")
    assert read_image(tmp_path / "b.bmp").mode == "L"
    Image.fromarray(_rgb(5, 6, 2), mode="LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").mode == "LA"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path: Path, orientation: int) -> None:
    img = Image.fromarray(_rgb(6, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=100, subsampling=0)
    with Image.open(tmp_path / "o.jpg") as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(read_image(tmp_path / "o.jpg").pixels, expected)


def test_icc_kept_on_write(tmp_path: Path) -> None:
    icc = _srgb_icc()
    for ext in (".png", ".jpg", ".webp", ".tif"):
        write_image(tmp_path / f"i{ext}", ImageData(pixels=_rgb(), icc_profile=icc))
        assert read_image(tmp_path / f"i{ext}").icc_profile == icc, ext


def test_pil_conversions() -> None:
    for mode, expect in [("RGBA", "RGBA"), ("L", "L"), ("I;16", "L"), ("F", "L"), ("YCbCr", "RGB")]:
        assert from_pil(Image.new(mode, (3, 2))).mode == expect
    assert to_pil(np.zeros((2, 3), np.uint16)).mode == "I;16"
    with pytest.raises(ValueError, match="PIL image cannot hold"):
        to_pil(np.zeros((2, 3, 3), np.uint16))


# ---------------------------------------------------------------------- bad input


def _raises(path: Path, pattern: str, **kw: object) -> ImageError:
    with pytest.raises(ImageError, match=pattern) as info:
        read_image(path, **kw)
    assert str(info.value).startswith(str(path))
    return info.value


def test_missing_empty_directory(tmp_path: Path) -> None:
    _raises(tmp_path / "nope.png", "file not found")
    (tmp_path / "empty.png").write_bytes(b"")
    _raises(tmp_path / "empty.png", "empty file")
    (tmp_path / "dir.png").mkdir()
    _raises(tmp_path / "dir.png", "is a directory")


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello, this is not an image\n")
    _raises(tmp_path / "notes.png", "not a readable PNG/JPEG/WebP/TIFF/BMP/GIF image")


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated(tmp_path: Path, ext: str) -> None:
    write_image(tmp_path / f"full{ext}", _rgb(64, 64))
    data = (tmp_path / f"full{ext}").read_bytes()
    (tmp_path / f"cut{ext}").write_bytes(data[: len(data) // 2])
    _raises(tmp_path / f"cut{ext}", "truncated or corrupt")


def test_truncated_png16(tmp_path: Path) -> None:
    write_image(tmp_path / "full.png", RNG.integers(0, 65536, (32, 32, 3), dtype=np.uint16))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _raises(tmp_path / "cut.png", "truncated")


@pytest.mark.optional
@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_unreadable_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.png"
    write_image(path, _rgb())
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads anything: make open() fail the way it does for a normal user
        real_open = open

        def deny(file: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            if Path(str(file)) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr("builtins.open", deny)
    _raises(path, "permission denied")


def _png_header_only(width: int, height: int, depth: int = 8, ctype: int = 2) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (png16.SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [8, 16])
def test_100_megapixel_header_refused_before_decoding(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(10_000, 10_000, depth))
    err = _raises(path, "100,000,000 pixels exceeds the limit")
    assert "--max-pixels" in str(err)
    # Raising the limit lets it through the guard; the (fake) data is then found truncated.
    _raises(path, "truncated", max_pixels=200_000_000)


def test_write_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImageError, match="cannot write") as info:
        write_image(tmp_path / "file" / "out.png", _rgb())
    assert str(info.value).startswith(str(tmp_path / "file" / "out.png"))
    with pytest.raises(ImageError, match="unsupported output format"):
        write_image(tmp_path / "out.xyz", _rgb())


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(ImageError, match="No space left"):
        write_image(tmp_path / "out.png", _rgb())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out_ext", [".jpg", ".png", ".webp"])
def test_exif_kept_without_orientation(tmp_path: Path, out_ext: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"  # Make
    Image.fromarray(_rgb(6, 10)).save(tmp_path / "src.jpg", exif=exif.tobytes())
    data = read_image(tmp_path / "src.jpg")
    assert data.pixels.shape == (10, 6, 3)  # rotated
    write_image(tmp_path / f"out{out_ext}", data)
    with Image.open(tmp_path / f"out{out_ext}") as im:
        back = im.getexif()
    assert back.get(0x010F) == "TestCam" and 0x0112 not in back  # no second rotation by viewers


def test_exif_in_16bit_png(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x0112] = 3
    pixels = RNG.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    write_image(tmp_path / "a.png", ImageData(pixels=pixels, exif=exif.tobytes()))
    data = read_image(tmp_path / "a.png")  # orientation 3 = rotated 180 on read
    np.testing.assert_array_equal(data.pixels, pixels[::-1, ::-1])
    with Image.open(tmp_path / "a.png") as im:
        assert im.getexif().get(0x010F) == "TestCam"
    assert data.exif is not None


def test_tiff_structure_tags_are_not_copied_as_exif(tmp_path: Path) -> None:
    write_image(tmp_path / "a.tif", _rgb())
    assert read_image(tmp_path / "a.tif").exif is None


def test_colour_key_transparency_becomes_alpha(tmp_path: Path) -> None:
    pixels = _rgb(4, 5)
    pixels[0, 0] = (10, 20, 30)
    Image.fromarray(pixels).save(tmp_path / "key.png", transparency=(10, 20, 30))
    data = read_image(tmp_path / "key.png")
    assert data.mode == "RGBA" and data.pixels[0, 0, 3] == 0
    assert (data.pixels[..., 3] == 0).sum() == (pixels == (10, 20, 30)).all(axis=2).sum()
