"""Reading and writing images for sr4: every common mode in, the same kind of image out.

`read_image` returns an `ImageData`: pixels as HxWxC (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA),
uint8 or uint16, EXIF orientation already applied, plus the ICC profile. Palette images become
RGB (RGBA when they carry transparency), CMYK / YCbCr / LAB become RGB, 1-bit becomes gray.
`write_image` writes one atomically, choosing the format from the suffix and keeping 16 bits and
the ICC profile where the format can hold them.

Every failure is an `ImageError` whose message starts with the file name.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sr4.image import png16
from sr4.utils.atomic import atomic_path

#: default pixel limit (Pillow's own decompression-bomb threshold); images above it are refused
#: from their header, before any decoding, unless a caller passes a larger `max_pixels`.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

READ_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
#: output suffix -> Pillow format name.
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
                 ".tiff": "TIFF", ".bmp": "BMP"}
_MODE_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class ImageError(ValueError):
    """An image file that cannot be read or written; `str()` starts with the path."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class ImageData:
    """Pixels HxWxC (C in 1..4: L, LA, RGB, RGBA), uint8 / uint16 (files) or float32 (PIL 'F')."""

    pixels: np.ndarray
    icc_profile: bytes | None = None
    #: EXIF block of the source (JPEG/PNG/WebP) without its Orientation tag, which was applied to
    #: the pixels; written back to JPEG/PNG/WebP outputs so camera data and dates survive.
    exif: bytes | None = None

    def __post_init__(self) -> None:
        if self.pixels.ndim == 2:
            self.pixels = self.pixels[:, :, None]
        if self.pixels.ndim != 3 or self.pixels.shape[2] not in _MODE_BY_CHANNELS:
            raise ValueError(f"pixels must be HxWxC with C in 1..4, got shape {self.pixels.shape}")

    @property
    def mode(self) -> str:
        """'L', 'LA', 'RGB' or 'RGBA'."""
        return _MODE_BY_CHANNELS[self.pixels.shape[2]]

    @property
    def bits(self) -> int:
        return self.pixels.dtype.itemsize * 8

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow reports it."""
        return self.pixels.shape[1], self.pixels.shape[0]


# ---------------------------------------------------------------------- PIL conversion

def from_pil(img: Image.Image) -> ImageData:
    """Convert a PIL image of any mode to `ImageData` (no EXIF transposition here)."""
    mode = img.mode
    icc = img.info.get("icc_profile")
    if mode == "1":
        img = img.convert("L")
    elif mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("LA" if mode == "L" else "RGBA")  # colour-key transparency (tRNS) becomes alpha
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("La", "LA"):
        img = img.convert("LA")
    elif mode in ("RGBa", "RGBA"):
        img = img.convert("RGBA")
    elif mode not in ("L", "RGB", "F") and not mode.startswith("I"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX
    if img.mode.startswith("I"):
        arr = np.asarray(img)
        if arr.dtype != np.uint16:
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ValueError(f"mode {mode} image has values outside 0..65535; "
                                 "only 16-bit integer gray is supported")
            arr = arr.astype(np.uint16)
        pixels = arr.astype(np.uint16, copy=False)
    elif img.mode == "F":
        pixels = np.asarray(img, dtype=np.float32)
    else:
        pixels = np.asarray(img, dtype=np.uint8)
    return ImageData(pixels=np.array(pixels), icc_profile=icc)


def to_pil(data: ImageData | np.ndarray) -> Image.Image:
    """`ImageData` or an HxW(xC) array -> PIL image (L/LA/RGB/RGBA, I;16 gray, F gray)."""
    pixels = data.pixels if isinstance(data, ImageData) else ImageData(pixels=data).pixels
    channels = pixels.shape[2]
    if pixels.dtype == np.uint8:
        img = _fromarray_u8(pixels)
    elif pixels.dtype == np.uint16 and channels == 1:
        img = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]))
    elif pixels.dtype == np.float32 and channels == 1:
        img = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]))
    else:
        raise ValueError(f"a PIL image cannot hold {channels}-channel {pixels.dtype} pixels (Pillow has no such mode)")
    if isinstance(data, ImageData) and data.icc_profile:
        img.info["icc_profile"] = data.icc_profile
    return img


def _fromarray_u8(pixels: np.ndarray) -> Image.Image:
    arr = np.ascontiguousarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    img = Image.fromarray(arr)
    expected = _MODE_BY_CHANNELS[pixels.shape[2]]
    return img if img.mode == expected else img.convert(expected)


# ---------------------------------------------------------------------- reading

def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to HxWxC pixels, as ImageOps.exif_transpose does."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
           8: lambda a: np.rot90(a, 1)}
    op = ops.get(orientation)
    return np.ascontiguousarray(op(pixels)) if op else pixels


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(path, f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
                               "(decompression-bomb guard; raise it with max_pixels / --max-pixels)")
    if width == 0 or height == 0:
        raise ImageError(path, f"image has no pixels ({width}x{height})")


def _read_bytes_head(path: Path) -> bytes:
    try:
        if path.is_dir():
            raise ImageError(path, "is a directory, not an image file")
        with open(path, "rb") as fh:
            return fh.read(64)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied (cannot read the file)") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read the file ({exc.strerror or exc})") from None


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> ImageData:
    """Read PNG/JPEG/WebP/TIFF/BMP (8 or 16 bit, any common mode) with EXIF orientation applied."""
    path = Path(path)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    head = _read_bytes_head(path)
    if not head:
        raise ImageError(path, "empty file (0 bytes)")
    header = png16.read_header(head)
    if header is not None and header[2] == 16 and header[3] in (2, 4, 6):
        _check_pixels(path, header[0], header[1], limit)
        return _read_png16(path)
    # Pillow's own bomb guard stays on; only raise its threshold when the caller allows more pixels.
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=READ_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(path, "not a readable PNG/JPEG/WebP/TIFF/BMP image "
                               f"(file starts with {head[:12]!r})") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"refused as a decompression bomb ({exc})") from None
    except PermissionError:
        raise ImageError(path, "permission denied (cannot read the file)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(path, f"corrupt image header ({exc})") from None
    with img:
        _check_pixels(path, img.width, img.height, limit)
        if img.format == "TIFF" and _is_16bit_colour_tiff(img):
            return _read_tiff16(path)
        try:
            img.load()
            data = from_pil(img)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(path, f"truncated or corrupt {img.format} image data ({exc})") from None
        orientation, exif = _split_exif(img.getexif())
    data.pixels = _orient(data.pixels, orientation)
    # In TIFF the "EXIF" Pillow reports is the file's own structure tags: never copy those.
    data.exif = exif if img.format != "TIFF" else None
    return data


def _split_exif(exif: Image.Exif) -> tuple[int, bytes | None]:
    """(orientation, EXIF bytes without the orientation tag or None); a damaged block is dropped."""
    try:
        orientation = exif.get(0x0112, 1)
        orientation = int(orientation) if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
        exif.pop(0x0112, None)
        return orientation, (exif.tobytes() if len(exif) else None)
    except Exception:  # EXIF blocks in the wild are often malformed; the pixels matter more
        return 1, None


def _is_16bit_colour_tiff(img: Image.Image) -> bool:
    bits = img.tag_v2.get(258, (8,)) if hasattr(img, "tag_v2") else (8,)
    bits = bits if isinstance(bits, tuple) else (bits,)
    return len(bits) > 1 and max(bits) == 16


def _read_png16(path: Path) -> ImageData:
    try:
        pixels, icc, exif = png16.decode(path.read_bytes())
    except png16.PNGError as exc:
        raise ImageError(path, str(exc)) from None
    except PermissionError:
        raise ImageError(path, "permission denied (cannot read the file)") from None
    orientation, exif_out = 1, None
    if exif:
        ex = Image.Exif()
        try:
            ex.load(exif)
        except Exception:  # a corrupt EXIF block must not lose the pixels
            ex = Image.Exif()
        orientation, exif_out = _split_exif(ex)
    return ImageData(pixels=_orient(pixels, orientation), icc_profile=icc, exif=exif_out)


def _read_tiff16(path: Path) -> ImageData:
    try:
        import tifffile
    except ImportError:
        raise ImageError(path, "16-bit colour TIFF needs the 'tifffile' package (pip install tifffile)") from None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            pixels = page.asarray()
            icc_tag = page.tags.get(34675)
            orient_tag = page.tags.get(274)
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ImageError(path, f"truncated or corrupt TIFF image data ({exc})") from None
    if pixels.ndim == 3 and pixels.shape[0] in (2, 3, 4) and pixels.shape[2] not in (2, 3, 4):
        pixels = pixels.transpose(1, 2, 0)  # planar configuration
    icc = bytes(icc_tag.value) if icc_tag is not None else None
    orientation = int(orient_tag.value) if orient_tag is not None else 1
    return ImageData(pixels=_orient(pixels.astype(np.uint16), orientation), icc_profile=icc)


# ---------------------------------------------------------------------- writing

def output_format(path: str | os.PathLike) -> str:
    fmt = WRITE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ImageError(path, f"unsupported output format {Path(path).suffix!r}; use one of "
                               f"{', '.join(sorted(WRITE_FORMATS))}")
    return fmt


def write_image(path: str | os.PathLike, data: ImageData | np.ndarray, *, quality: int = 95) -> None:
    """Write atomically; the format follows the suffix (.png .jpg .jpeg .webp .tif .tiff .bmp).

    16-bit pixels stay 16-bit in PNG and TIFF and become 8-bit elsewhere; JPEG and BMP drop alpha
    (they have none); the ICC profile is embedded in every format that supports one.
    """
    path = Path(path)
    if not isinstance(data, ImageData):
        data = ImageData(pixels=data)
    fmt = output_format(path)
    pixels = data.pixels
    if pixels.dtype == np.float32 or pixels.dtype == np.float64:
        pixels = np.rint(np.clip(pixels, 0, 1) * 65535).astype(np.uint16)
    if pixels.dtype == np.uint16 and fmt not in ("PNG", "TIFF"):
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if fmt in ("JPEG", "BMP") and pixels.shape[2] in (2, 4):
        pixels = pixels[:, :, :-1]  # neither format stores alpha (Pillow reads 32-bit BMP back as RGB)
    icc = data.icc_profile
    try:
        with atomic_path(path) as tmp:
            if pixels.dtype == np.uint16 and pixels.shape[2] > 1:
                if fmt == "PNG":
                    tmp.write_bytes(png16.encode(pixels, icc, exif=data.exif))
                else:
                    _write_tiff16(tmp, pixels, icc)
            else:
                img = to_pil(ImageData(pixels=np.ascontiguousarray(pixels)))
                kwargs: dict = {"icc_profile": icc} if icc else {}
                if data.exif and fmt in ("JPEG", "PNG", "WEBP"):
                    kwargs["exif"] = data.exif
                if fmt in ("JPEG", "WEBP"):
                    kwargs["quality"] = quality
                if fmt == "TIFF":
                    kwargs["compression"] = "tiff_deflate"
                img.save(tmp, format=fmt, **kwargs)
    except ImageError:
        raise
    except (OSError, ValueError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageError(path, f"cannot write the output ({problem})") from None


def _write_tiff16(tmp: Path, pixels: np.ndarray, icc: bytes | None) -> None:
    try:
        import tifffile
    except ImportError:
        raise ImageError(tmp, "16-bit colour TIFF output needs the 'tifffile' package (pip install tifffile)") from None
    extra = {}
    if pixels.shape[2] in (2, 4):
        extra["extrasamples"] = ["unassalpha"]
    photometric = "minisblack" if pixels.shape[2] <= 2 else "rgb"
    tags = [(34675, "B", len(icc), icc, True)] if icc else None
    tifffile.imwrite(tmp, pixels, photometric=photometric, compression="zlib", extratags=tags, **extra)
