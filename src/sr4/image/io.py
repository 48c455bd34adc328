"""Reading and writing images for sr4: every common mode in, the same kind of image out.

`read_image` returns an `ImageData`: pixels as HxWxC (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA),
uint8 or uint16, EXIF orientation already applied, plus the ICC profile. Palette images become
RGB (RGBA when they carry transparency), CMYK / YCbCr / LAB become RGB, 1-bit becomes gray.
A profile that does not describe the converted pixels is never passed on: CMYK images are
converted through their CMYK profile to sRGB (Pillow's ImageCms), other mismatches are dropped
with a note (`ImageData.notes`).
Animated and multi-page files (APNG, animated WebP, GIF, multi-page TIFF) are refused unless
the caller asks for every frame (`frames="all"`); then `ImageData.animation` holds them all.
`write_image` writes one atomically, choosing the format from the suffix and keeping 16 bits,
the ICC profile and every frame where the format can hold them; it never replaces an existing
file unless asked to.

Memory is bounded by the size the file declares: the pixel limit (`max_pixels`, all frames
together) is checked from the headers before any decoding, and every decoder stops at the
declared size (sr4's own 16-bit PNG decoder inflates no further, 16-bit TIFF segments are
measured before tifffile inflates them).

Every failure is an `ImageError` whose message starts with the file name.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from sr4.errors import ImageError, OutputExistsError
from sr4.image import png16, tiff16
from sr4.image.marker import BMP_MARK, SOFTWARE, exif_with_software
from sr4.utils.atomic import Replace, atomic_file

#: default pixel limit (Pillow's own decompression-bomb threshold); images above it are refused
#: from their header, before any decoding, unless a caller passes a larger `max_pixels`.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

READ_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
#: output suffix -> Pillow format name.
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
                 ".tiff": "TIFF", ".bmp": "BMP", ".gif": "GIF"}
#: formats that hold several frames (animation or pages).
MULTI_FRAME_FORMATS = ("PNG", "WEBP", "GIF", "TIFF")
_MODE_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
# ICC header colour space (bytes 16..20) a profile must declare for pixels with this many channels.
_ICC_SPACE_BY_CHANNELS = {1: b"GRAY", 2: b"GRAY", 3: b"RGB ", 4: b"RGB "}


@dataclass
class Animation:
    """Every frame of an animated or multi-page file, frame 0 included.

    Frames are HxWxC arrays like `ImageData.pixels`; TIFF pages may differ in size and mode,
    frames of the other formats share both. `durations` are milliseconds per frame (empty for
    TIFF pages); `loop` is how often the animation plays (0 = forever, None = once, GIF without
    a loop block)."""

    frames: list[np.ndarray]
    durations: list[int] = field(default_factory=list)
    loop: int | None = 0


@dataclass
class ImageData:
    """Pixels HxWxC (C in 1..4: L, LA, RGB, RGBA), uint8 / uint16 (files) or float32 (PIL 'F')."""

    pixels: np.ndarray
    icc_profile: bytes | None = None
    #: EXIF block of the source (JPEG/PNG/WebP) without its Orientation tag, which was applied to
    #: the pixels; written back to JPEG/PNG/WebP outputs so camera data and dates survive.
    exif: bytes | None = None
    #: what reading changed that the user should know (a profile converted or dropped).
    notes: list[str] = field(default_factory=list)
    #: all frames of a multi-frame file read with frames="all" (`pixels` is frame 0), else None.
    animation: Animation | None = None

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

    @property
    def frame_count(self) -> int:
        return len(self.animation.frames) if self.animation is not None else 1


def icc_matches(icc: bytes | None, channels: int) -> bool:
    """Whether an ICC profile's colour space fits pixels with this many channels (gray or RGB)."""
    return icc is None or (len(icc) >= 20 and icc[16:20] == _ICC_SPACE_BY_CHANNELS[channels])


def _icc_space(icc: bytes) -> str:
    return icc[16:20].decode("latin-1").strip() if len(icc) >= 20 else "unknown"


# ---------------------------------------------------------------------- PIL conversion

def from_pil(img: Image.Image) -> ImageData:
    """Convert a PIL image of any mode to `ImageData` (no EXIF transposition here).

    A CMYK image with a CMYK ICC profile is converted through it to sRGB (and gets an sRGB
    profile); any other profile that does not describe the converted pixels is dropped. Both
    are recorded in `notes`."""
    mode = img.mode
    icc = img.info.get("icc_profile") or None
    notes: list[str] = []
    if mode == "CMYK" and icc is not None and icc[16:20] == b"CMYK":
        img, icc, note = _cmyk_to_srgb(img, icc)
        notes.append(note)
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
    elif img.mode not in ("L", "RGB", "F") and not img.mode.startswith("I"):
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
    data = ImageData(pixels=np.array(pixels), notes=notes)
    if icc is not None and not icc_matches(icc, data.pixels.shape[2]):
        notes.append(f"its {_icc_space(icc)} ICC profile does not describe the {data.mode} pixels sr4 works on; "
                     "dropped (colours are passed on unmanaged)")
        icc = None
    data.icc_profile = icc
    return data


def _cmyk_to_srgb(img: Image.Image, icc: bytes) -> tuple[Image.Image, bytes | None, str]:
    """Convert a CMYK image through its CMYK profile to sRGB: (RGB image, sRGB profile, note).

    Without a usable profile (damaged, or Pillow built without littleCMS) the naive conversion
    is left to the caller and the profile is dropped."""
    try:
        from PIL import ImageCms

        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        rgb = cast(Image.Image, ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)), srgb,
                                                          outputMode="RGB"))
        return rgb, srgb.tobytes(), "CMYK converted to sRGB through its ICC profile"
    except Exception as exc:  # noqa: BLE001 - profiles in the wild fail in many ways (PyCMSError, OSError, ...)
        return img, None, (f"its CMYK ICC profile could not be applied ({exc}); converted to RGB without it "
                           "and the profile dropped")


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


def _check_pixels(path: Path, sizes: list[tuple[int, int]], max_pixels: int) -> None:
    """Refuse, from the headers, frames (width, height) that hold more pixels in all than allowed."""
    total = sum(w * h for w, h in sizes)
    if total > max_pixels:
        width, height = sizes[0]
        if len(sizes) == 1:
            what = f"{width}x{height}"
        elif len(set(sizes)) == 1:
            what = f"{len(sizes)} frames of {width}x{height}"
        else:
            what = f"{len(sizes)} pages"
        raise ImageError(path, f"{what} = {total:,} pixels exceeds the limit of {max_pixels:,} "
                               "(decompression-bomb guard; raise it with max_pixels / --max-pixels)")
    for width, height in sizes:
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


def _frames_word(fmt: str, count: int) -> str:
    return f"{count} pages (multi-page TIFF)" if fmt == "TIFF" else f"{count} frames (animated {fmt})"


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None, frames: str = "refuse") -> ImageData:
    """Read PNG/JPEG/WebP/TIFF/BMP/GIF (8 or 16 bit, any common mode) with EXIF orientation applied.

    max_pixels: largest number of pixels decoded, all frames together (default: Pillow's
        decompression-bomb limit), checked from the headers before decoding.
    frames: "refuse" (default): a file with several frames or pages is an error, so that no
        frame is ever dropped silently; "all": every frame is decoded into `ImageData.animation`.
    """
    if frames not in ("refuse", "all"):
        raise ValueError(f"frames must be 'refuse' or 'all', got {frames!r}")
    path = Path(path)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    head = _read_bytes_head(path)
    if not head:
        raise ImageError(path, "empty file (0 bytes)")
    header = png16.read_header(head)
    if header is not None and header[2] == 16 and header[3] in (2, 4, 6):
        _check_pixels(path, [(header[0], header[1])], limit)
        return _read_png16(path)
    # Pillow's own bomb guard stays on; only raise its threshold when the caller allows more pixels.
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=READ_FORMATS)
    except UnidentifiedImageError:
        if head[:4] in (b"II*\x00", b"MM\x00*"):  # Pillow has no 16-bit gray+alpha: tifffile reads those
            return _read_tiff_pillow_cannot_open(path, frames, limit)
        raise ImageError(path, "not a readable PNG/JPEG/WebP/TIFF/BMP/GIF image "
                               f"(file starts with {head[:12]!r})") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"refused as a decompression bomb ({exc})") from None
    except PermissionError:
        raise ImageError(path, "permission denied (cannot read the file)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(path, f"corrupt image header ({exc})") from None
    with img:
        fmt = img.format
        try:
            count = int(getattr(img, "n_frames", 1))
            if count > 1 and frames == "refuse":
                raise ImageError(path, f"{_frames_word(fmt or 'image', count)}: only single images are read here "
                                       "(sr4 upscale keeps every frame)")
            sizes = _frame_sizes(img, count)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(path, f"corrupt {fmt} frame structure ({exc})") from None
        _check_pixels(path, sizes, limit)
        if fmt == "TIFF" and tiff16.is_16bit_colour(img):
            return _read_tiff16(path, count)
        try:
            decoded, durations = [], []
            for index in range(count):
                if count > 1:
                    img.seek(index)
                img.load()
                decoded.append(from_pil(img))
                durations.append(int(round(float(img.info.get("duration") or 0))))
            loop = img.info.get("loop")
            if count > 1:
                img.seek(0)
            orientation, exif = _split_exif(img.getexif())
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(path, f"truncated or corrupt {fmt} image data ({exc})") from None
    data = decoded[0]
    data.pixels = _orient(data.pixels, orientation)
    # In TIFF the "EXIF" Pillow reports is the file's own structure tags: never copy those.
    data.exif = exif if fmt != "TIFF" else None
    if count > 1:
        frames_px = [data.pixels] + [_orient(d.pixels, orientation) for d in decoded[1:]]
        if fmt != "TIFF":
            frames_px = unify_channels(frames_px)  # GIF's first frame may be palette, the others RGB(A)
            data.pixels = frames_px[0]
        if fmt == "TIFF":  # pages have no timing
            durations, loop = [], 0
        data.animation = Animation(frames_px, durations, int(loop) if loop is not None else None)
    return data


def _frame_sizes(img: Image.Image, count: int) -> list[tuple[int, int]]:
    """(width, height) of every frame; only TIFF pages differ (read from each page's header)."""
    if count == 1 or img.format != "TIFF":
        return [img.size] * count
    sizes = []
    for index in range(count):
        img.seek(index)
        sizes.append(img.size)
    img.seek(0)
    return sizes


def unify_channels(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Give frames one channel layout: colour if any frame is colour, alpha (opaque) if any has alpha."""
    layouts = {f.shape[2] for f in frames}
    if len(layouts) == 1:
        return frames
    colour = any(c >= 3 for c in layouts)
    alpha = any(c in (2, 4) for c in layouts)
    out = []
    for f in frames:
        c = f.shape[2]
        base, extra = (f[:, :, :1], f[:, :, 1:]) if c <= 2 else (f[:, :, :3], f[:, :, 3:])
        if colour and base.shape[2] == 1:
            base = np.repeat(base, 3, axis=2)
        if alpha and not extra.shape[2]:
            extra = np.full(f.shape[:2] + (1,), np.iinfo(f.dtype).max if f.dtype.kind == "u" else 1, f.dtype)
        out.append(np.ascontiguousarray(np.concatenate([base, extra], axis=2)))
    return out


def _split_exif(exif: Image.Exif) -> tuple[int, bytes | None]:
    """(orientation, EXIF bytes without the orientation tag or None); a damaged block is dropped."""
    try:
        orientation = exif.get(0x0112, 1)
        orientation = int(orientation) if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
        exif.pop(0x0112, None)
        return orientation, (exif.tobytes() if len(exif) else None)
    except Exception:  # EXIF blocks in the wild are often malformed; the pixels matter more
        return 1, None


def _read_png16(path: Path) -> ImageData:
    try:
        with open(path, "rb") as fh:
            pixels, icc, exif = png16.decode(fh)
    except png16.PNGError as exc:
        raise ImageError(path, str(exc)) from None
    except PermissionError:
        raise ImageError(path, "permission denied (cannot read the file)") from None
    except (OSError, struct.error) as exc:
        raise ImageError(path, f"truncated or corrupt PNG image data ({exc})") from None
    orientation, exif_out = 1, None
    if exif:
        ex = Image.Exif()
        try:
            ex.load(exif)
        except Exception:  # a corrupt EXIF block must not lose the pixels
            ex = Image.Exif()
        orientation, exif_out = _split_exif(ex)
    return _with_profile(ImageData(pixels=_orient(pixels, orientation), exif=exif_out), icc)


def _read_tiff_pillow_cannot_open(path: Path, frames: str, limit: int) -> ImageData:
    """A TIFF Pillow does not identify (16-bit gray+alpha, as sr4 writes for LA inputs): page count and sizes
    from tifffile's headers, the same frame and pixel rules as every other file, then tiff16's bounded read."""
    try:
        sizes = tiff16.page_sizes(path)
    except tiff16.TIFFError as exc:
        raise ImageError(path, str(exc)) from None
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ImageError(path, f"not a readable TIFF image ({exc})") from None
    if len(sizes) > 1 and frames == "refuse":
        raise ImageError(path, f"{_frames_word('TIFF', len(sizes))}: only single images are read here "
                               "(sr4 upscale keeps every frame)")
    _check_pixels(path, sizes, limit)
    return _read_tiff16(path, len(sizes))


def _read_tiff16(path: Path, pages: int) -> ImageData:
    try:
        frames, icc, orientation = tiff16.read(path, pages)
    except tiff16.TIFFError as exc:
        raise ImageError(path, str(exc)) from None
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ImageError(path, f"truncated or corrupt TIFF image data ({exc})") from None
    frames = [_orient(f, orientation) for f in frames]
    data = ImageData(pixels=frames[0])
    if pages > 1:
        data.animation = Animation(frames, [], 0)
    return _with_profile(data, icc)


def _with_profile(data: ImageData, icc: bytes | None) -> ImageData:
    """Attach `icc` when it describes the pixels; otherwise drop it with a note."""
    if icc and not icc_matches(icc, data.pixels.shape[2]):
        data.notes.append(f"its {_icc_space(icc)} ICC profile does not describe the {data.mode} pixels; dropped")
        icc = None
    data.icc_profile = icc or None
    return data


# ---------------------------------------------------------------------- writing

def output_format(path: str | os.PathLike) -> str:
    fmt = WRITE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ImageError(path, f"unsupported output format {Path(path).suffix!r}; use one of "
                               f"{', '.join(sorted(WRITE_FORMATS))}")
    return fmt


def _pixels_for(fmt: str, pixels: np.ndarray, animated: bool) -> np.ndarray:
    """Pixels as `fmt` stores them: 16 bits only in PNG (not animated) and TIFF, no alpha in JPEG/BMP."""
    if pixels.dtype == np.float32 or pixels.dtype == np.float64:
        pixels = np.rint(np.clip(pixels, 0, 1) * 65535).astype(np.uint16)
    if pixels.dtype == np.uint16 and (fmt not in ("PNG", "TIFF") or (fmt == "PNG" and animated)):
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if fmt in ("JPEG", "BMP") and pixels.shape[2] in (2, 4):
        pixels = pixels[:, :, :-1]  # neither format stores alpha (Pillow reads 32-bit BMP back as RGB)
    return np.ascontiguousarray(pixels)


def write_image(path: str | os.PathLike, data: ImageData | np.ndarray, *, quality: int = 95,
                overwrite: Replace = True) -> None:
    """Write atomically; the format follows the suffix (.png .jpg .jpeg .webp .tif .tiff .bmp .gif).

    16-bit pixels stay 16-bit in PNG and TIFF and become 8-bit elsewhere; JPEG and BMP drop alpha
    (they have none); the ICC profile is embedded in every format that supports one when it
    describes the pixels (gray or RGB). Every frame of `data.animation` is written to PNG (APNG),
    WebP, GIF (re-quantised to 256 colours per frame) and TIFF (pages); JPEG and BMP refuse it.
    Every byte is checked to be on disk before the file gets its name. With overwrite=False an
    existing file, also one that appears while writing, is never replaced (`OutputExistsError`);
    with a predicate (`sr4.image.marker.written_by_sr4`) only a file it accepts is, checked just
    before the rename (`sr4.utils.atomic.publish`). Every file carries sr4's mark
    (`sr4.image.marker`): the Software field, the EXIF Software tag of carried-over EXIF included.
    """
    path = Path(path)
    if not isinstance(data, ImageData):
        data = ImageData(pixels=data)
    fmt = output_format(path)
    frames = data.animation.frames if data.animation is not None and data.frame_count > 1 else [data.pixels]
    animated = len(frames) > 1
    if animated and fmt not in MULTI_FRAME_FORMATS:
        raise ImageError(path, f"the image has {len(frames)} frames and {fmt} holds one; write PNG, WebP, GIF "
                               "or TIFF to keep every frame (--ext png|webp|gif|tiff)")
    frames = [_pixels_for(fmt, f, animated) for f in frames]
    if animated and fmt != "TIFF":
        frames = unify_channels(frames)
        if len({f.shape for f in frames}) > 1:
            raise ImageError(path, "the pages differ in size; only TIFF holds such pages (--ext tiff)")
    icc = data.icc_profile if all(icc_matches(data.icc_profile, f.shape[2]) for f in frames) else None
    try:
        with atomic_file(path, replace=overwrite) as fh:
            if fmt == "TIFF" and any(f.dtype == np.uint16 and f.shape[2] > 1 for f in frames):
                tiff16.write(cast(BinaryIO, fh), frames, icc, software=SOFTWARE)
            elif fmt == "PNG" and frames[0].dtype == np.uint16 and frames[0].shape[2] > 1:
                exif = exif_with_software(data.exif) if data.exif else None
                fh.write(png16.encode(frames[0], icc, exif=exif, software=SOFTWARE))
            else:
                _save_with_pillow(fh, fmt, frames, data, icc, quality)
    except (ImageError, OutputExistsError):
        raise
    except tiff16.TIFFError as exc:
        raise ImageError(path, str(exc)) from None
    except (OSError, ValueError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageError(path, f"cannot write the output ({problem})") from None


def _save_with_pillow(fh, fmt: str, frames: list[np.ndarray], data: ImageData, icc: bytes | None,  # noqa: ANN001
                      quality: int) -> None:
    from PIL import PngImagePlugin

    images = [to_pil(ImageData(pixels=f)) for f in frames]
    kwargs: dict = {"icc_profile": icc} if icc else {}
    # sr4's mark (`sr4.image.marker`); EXIF carried over from the input gets sr4 as its Software.
    if fmt in ("JPEG", "WEBP") or (data.exif and fmt == "PNG"):
        kwargs["exif"] = exif_with_software(data.exif)
    if fmt == "PNG":
        kwargs["pnginfo"] = PngImagePlugin.PngInfo()
        kwargs["pnginfo"].add_text("Software", SOFTWARE)
    elif fmt == "TIFF":
        kwargs["software"] = SOFTWARE
    elif fmt == "GIF":
        kwargs["comment"] = SOFTWARE
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if fmt == "TIFF":
        kwargs["compression"] = "tiff_deflate"
    if len(images) > 1:
        kwargs.update(save_all=True, append_images=images[1:])
        if fmt != "TIFF":
            animation = data.animation
            durations = animation.durations if animation and len(animation.durations) == len(images) else []
            # Pages of a TIFF have no timing: 100 ms each.
            kwargs["duration"] = [d if d > 0 else 100 for d in durations] or 100
            loop = animation.loop if animation else 0
            if fmt == "GIF":
                if loop is not None:
                    kwargs["loop"] = loop  # no loop block: the GIF plays once, as its source did
                if frames[0].shape[2] in (2, 4):
                    kwargs["disposal"] = 2  # clear each frame, so transparent areas do not show the last one
            else:
                kwargs["loop"] = 1 if loop is None else loop
    images[0].save(fh, format=fmt, **kwargs)
    if fmt == "BMP":  # no metadata in BMP: the header's application-defined reserved bytes hold the mark
        end = fh.tell()
        fh.seek(6)
        fh.write(BMP_MARK)
        fh.seek(end)
