"""Image files that try to lose frames, blow up memory or mislabel colours (`sr4.image.io`)."""

from __future__ import annotations

import io
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from image_fixtures import animation, cmyk_icc_profile, png_bomb, zlib_of_zeros
from PIL import Image, ImageCms

from sr4.image.io import ImageData, ImageError, read_image, write_image

RNG = np.random.default_rng(11)


def _frames(n: int = 3, h: int = 9, w: int = 13, c: int = 3) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (h, w, c), dtype=np.uint8) for _ in range(n)]


# ---------------------------------------------------------------------- frames


@pytest.mark.parametrize("ext", [".png", ".webp", ".gif", ".tiff"])
def test_multi_frame_files_are_refused_unless_every_frame_is_asked_for(tmp_path: Path, ext: str) -> None:
    frames = _frames(3, c=3)
    if ext == ".gif":  # a GIF holds a palette: give it few colours so the frames survive exactly
        frames = [(f // 64 * 64).astype(np.uint8) for f in frames]
    path = animation(tmp_path / f"a{ext}", frames, [40, 80, 120], loop=2)
    with pytest.raises(ImageError, match="3 (frames|pages)") as info:
        read_image(path)
    assert str(info.value).startswith(str(path))
    data = read_image(path, frames="all")
    assert data.frame_count == 3 and len(data.animation.frames) == 3
    for got, want in zip(data.animation.frames, frames):
        np.testing.assert_array_equal(got, want)
    if ext != ".tiff":
        assert data.animation.durations == [40, 80, 120] and data.animation.loop == 2


def test_frame_pixels_count_against_the_limit(tmp_path: Path) -> None:
    path = animation(tmp_path / "a.png", _frames(3, 10, 10))
    with pytest.raises(ImageError, match="3 frames of 10x10 = 300 pixels exceeds the limit of 299"):
        read_image(path, frames="all", max_pixels=299)
    assert read_image(path, frames="all", max_pixels=300).frame_count == 3
    pages = tmp_path / "pages.tiff"
    with tifffile.TiffWriter(pages) as tif:  # 16-bit colour pages of different sizes
        tif.write(RNG.integers(0, 65536, (10, 10, 3), dtype=np.uint16), photometric="rgb")
        tif.write(RNG.integers(0, 65536, (5, 4, 3), dtype=np.uint16), photometric="rgb")
    with pytest.raises(ImageError, match="2 pages = 120 pixels exceeds"):
        read_image(pages, frames="all", max_pixels=119)
    data = read_image(pages, frames="all")
    assert [f.shape for f in data.animation.frames] == [(10, 10, 3), (5, 4, 3)] and data.bits == 16


@pytest.mark.parametrize("out_ext", [".png", ".webp", ".gif", ".tiff"])
def test_every_frame_is_written_with_its_timing(tmp_path: Path, out_ext: str) -> None:
    frames = [(f // 64 * 64).astype(np.uint8) for f in _frames(4, c=4)]
    for f in frames:
        f[..., 3] = np.where(f[..., 3] >= 128, 255, 0)  # GIF keeps binary transparency only
    src = read_image(animation(tmp_path / "in.png", frames, [30, 60, 90, 120], loop=0), frames="all")
    write_image(tmp_path / f"out{out_ext}", src)
    back = read_image(tmp_path / f"out{out_ext}", frames="all")
    assert back.frame_count == 4 and back.mode == "RGBA"
    for got, want in zip(back.animation.frames, frames):
        if out_ext == ".webp":  # lossy colours (noise here), lossless alpha
            np.testing.assert_array_equal(got[..., 3], want[..., 3])
        elif out_ext == ".gif":  # transparent pixels carry no colour in a GIF
            np.testing.assert_array_equal(got[..., 3], want[..., 3])
            np.testing.assert_array_equal(got[want[..., 3] > 0], want[want[..., 3] > 0])
        else:
            np.testing.assert_array_equal(got, want)
    if out_ext != ".tiff":
        assert back.animation.durations == [30, 60, 90, 120] and back.animation.loop == 0


@pytest.mark.parametrize("out_ext", [".jpg", ".bmp"])
def test_single_image_formats_refuse_animations(tmp_path: Path, out_ext: str) -> None:
    src = read_image(animation(tmp_path / "in.webp", _frames(3)), frames="all")
    with pytest.raises(ImageError, match="3 frames and .* holds one"):
        write_image(tmp_path / f"out{out_ext}", src)
    assert list(tmp_path.iterdir()) == [tmp_path / "in.webp"]


def test_animated_16bit_png_is_refused_not_flattened(tmp_path: Path) -> None:
    from image_fixtures import png_chunk

    pixels = RNG.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    write_image(tmp_path / "a.png", pixels)
    data = (tmp_path / "a.png").read_bytes()
    actl = png_chunk(b"acTL", struct.pack(">II", 3, 0))
    (tmp_path / "anim.png").write_bytes(data[:33] + actl + data[33:])  # after IHDR, as APNG puts it
    for frames in ("refuse", "all"):
        with pytest.raises(ImageError, match="animated 16-bit PNG \\(3 frames\\)"):
            read_image(tmp_path / "anim.png", frames=frames)


# ---------------------------------------------------------------------- bombs


def test_16bit_png_zlib_bomb_inflates_only_the_declared_size(tmp_path: Path) -> None:
    path = png_bomb(tmp_path / "bomb.png", 8, 8, inflated=200 << 20)  # 8x8 declared, 200 MB of zeros
    write_image(tmp_path / "warm.png", np.zeros((2, 2, 3), np.uint16))
    read_image(tmp_path / "warm.png")  # the row filter's first (jit) call is not the decoder's memory
    tracemalloc.start()
    try:
        data = read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data.pixels.shape == (8, 8, 3) and data.bits == 16 and not data.pixels.any()
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MB for an 8x8 image"


def test_16bit_png_header_is_checked_against_the_limit(tmp_path: Path) -> None:
    path = png_bomb(tmp_path / "big.png", 3000, 2000, inflated=1000)
    with pytest.raises(ImageError, match="3000x2000 = 6,000,000 pixels exceeds the limit of 5,999,999"):
        read_image(path, max_pixels=5_999_999)


def _tiff16_with_strip(path: Path, strip: bytes, compression: int) -> Path:
    """An 8x8 16-bit RGB TIFF with one strip whose bytes are replaced by `strip`."""
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint16), photometric="rgb", compression="zlib", rowsperstrip=8)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset_at = page.tags["StripOffsets"].valueoffset
        count_at = page.tags["StripByteCounts"].valueoffset
        count_type = page.tags["StripByteCounts"].dtype
        compression_at = page.tags["Compression"].valueoffset
    data = bytearray(path.read_bytes())
    data[compression_at:compression_at + 2] = struct.pack("<H", compression)
    start = len(data)
    data += strip
    data[offset_at:offset_at + 4] = struct.pack("<I", start)
    if int(count_type) == 3:  # SHORT
        data[count_at:count_at + 2] = struct.pack("<H", min(len(strip), 65535))
    else:
        data[count_at:count_at + 4] = struct.pack("<I", len(strip))
    path.write_bytes(bytes(data))
    return path


def test_16bit_tiff_segment_bombs_are_refused(tmp_path: Path) -> None:
    deflate = _tiff16_with_strip(tmp_path / "deflate.tif", zlib_of_zeros(100 << 20), 8)
    with pytest.raises(ImageError, match="inflates beyond the 384 bytes the page declares"):
        read_image(deflate)
    packbits = _tiff16_with_strip(tmp_path / "packbits.tif", b"\x81\x00" * 30000, 32773)  # 127 zeros per 2 bytes
    with pytest.raises(ImageError, match="decompression bomb"):
        read_image(packbits)
    honest = _tiff16_with_strip(tmp_path / "ok.tif", zlib_of_zeros(384), 8)
    assert read_image(honest).pixels.shape == (8, 8, 3)


# ---------------------------------------------------------------------- colour profiles


def test_cmyk_is_converted_through_its_profile(tmp_path: Path) -> None:
    icc = cmyk_icc_profile()
    cmyk = Image.fromarray(RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", icc_profile=icc, quality=100)
    data = read_image(tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as im:
        expected = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                             ImageCms.createProfile("sRGB"), outputMode="RGB")
        naive = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(data.pixels, np.asarray(expected))
    assert np.abs(data.pixels.astype(int) - naive).max() > 20  # the profile did change the colours
    assert data.icc_profile[16:20] == b"RGB " and "through its ICC profile" in data.notes[0]
    write_image(tmp_path / "out.png", data)
    assert read_image(tmp_path / "out.png").icc_profile[16:20] == b"RGB "


def test_unusable_or_mismatched_profiles_are_dropped_with_a_note(tmp_path: Path) -> None:
    broken = cmyk_icc_profile()[:140]  # a CMYK header, the tags cut off
    cmyk = Image.fromarray(RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", icc_profile=broken)
    data = read_image(tmp_path / "c.jpg")
    assert data.mode == "RGB" and data.icc_profile is None and "could not be applied" in data.notes[0]
    with Image.open(tmp_path / "c.jpg") as im:
        np.testing.assert_array_equal(data.pixels, np.asarray(im.convert("RGB")))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(RNG.integers(0, 256, (4, 4), dtype=np.uint8)).save(tmp_path / "g.png", icc_profile=srgb)
    gray = read_image(tmp_path / "g.png")
    assert gray.mode == "L" and gray.icc_profile is None and "does not describe the L pixels" in gray.notes[0]
    # Writing never attaches a profile that does not fit the pixels.
    write_image(tmp_path / "g2.png", ImageData(pixels=gray.pixels, icc_profile=srgb))
    with Image.open(tmp_path / "g2.png") as im:
        assert "icc_profile" not in im.info
