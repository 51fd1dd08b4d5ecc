"""Image listing and decoding shared by training data and batch jobs (Pillow + numpy only, no torch)."""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from aeflow.errors import UsageError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
# Refuse images above this many pixels before decoding them (decompression bombs). 12000x9000 fits.
DEFAULT_MAX_PIXELS = 200_000_000


class ImageDecodeError(UsageError, ValueError):
    """Raised when bytes are not a decodable image, or one we refuse to decode."""


def iter_image_paths(root: str | os.PathLike) -> Iterator[Path]:
    """Yield image files under root, recursively, in sorted order, as a stream.

    Directories are walked one at a time (never the whole tree in memory); symlinked
    directories are not followed (no loops); a directory named like an image is skipped.
    """
    for path, problem in iter_image_entries(root):
        if problem is None:
            yield path


def iter_image_entries(root: str | os.PathLike) -> Iterator[tuple[Path, str | None]]:
    """Like iter_image_paths, but also yield image-named entries that cannot be read as files, with why.

    (path, None) for a regular image file; (path, problem) for a symlink loop, a dangling symlink, or
    something that is not a regular file (FIFO, socket, device: reading a FIFO would block forever).
    A directory named like an image is walked as a folder; a symlink to a folder is not followed.
    """
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() in IMAGE_EXTS:
            yield root, None
        return
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            warnings.warn(f"cannot list {d}: {exc}", stacklevel=2)
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if not e.name.startswith("."):
                        subdirs.append(Path(e.path))
                    continue
            except OSError:
                continue
            if not e.name.lower().endswith(tuple(IMAGE_EXTS)):
                continue
            problem = _entry_problem(e.path)
            if problem != "folder":
                yield Path(e.path), problem
        # reversed so the stack pops subdirectories in sorted order
        stack.extend(reversed(subdirs))


def _entry_problem(path: str) -> str | None:
    """None for a regular file (symlinks followed), 'folder' for a symlinked folder, else why it is unreadable."""
    import errno
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop: the link never reaches a file"
        if exc.errno == errno.ENOENT:
            return "dangling symlink: its target does not exist" if os.path.islink(path) \
                else "file vanished before it could be read"
        return f"cannot stat: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "folder"
    kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
    return f"not a regular file ({kind}); refusing to read it"


def _to_uint8_array(im) -> np.ndarray:
    """Convert a Pillow image of any mode to a uint8 array, keeping alpha if present."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im)
        # 16-bit greyscale: keep the top 8 bits rather than clipping at 255
        a = (a.astype(np.uint32) >> 8).clip(0, 255) if a.max() > 255 else a
        return a.astype(np.uint8)[..., None]
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        return np.clip(a, 0, 255).astype(np.uint8)[..., None]
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
        im = im.convert("RGB" if im.mode != "1" else "L")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    elif im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")
    assert isinstance(im, Image.Image)
    return _pil_bands_to_array(im)


def _pil_bands_to_array(im, band_rows: int = 512) -> np.ndarray:
    """np.asarray(im) as uint8 HxWxC, copied band by band: a whole-image asarray goes through a full-size
    bytes object first, one more copy of a very large image at the decode peak."""
    w, h = im.size
    c = len(im.getbands())
    a = np.empty((h, w, c), np.uint8)
    for y in range(0, h, band_rows):
        band = np.asarray(im.crop((0, y, w, min(h, y + band_rows))), dtype=np.uint8)
        a[y:y + band.shape[0]] = band.reshape(band.shape[0], w, c)
    return a


def normalize_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """Return a uint8 HxWxC array with C = channels (1 or 3); alpha is composited onto white."""
    if a.shape[2] in (2, 4):  # grey+alpha or RGBA
        alpha = a[..., -1:].astype(np.float32) / 255.0
        rgb = a[..., :-1].astype(np.float32)
        a = np.clip(rgb * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
    if channels == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif channels == 1 and a.shape[2] == 3:
        # ITU-R 601 luma, as Pillow's convert("L")
        y = a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        a = np.clip(y + 0.5, 0, 255).astype(np.uint8)[..., None]
    return np.ascontiguousarray(a)


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open image bytes with Pillow (header only), refusing bombs; first frame of animations."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large, refused before decoding (decompression bomb?): {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not a decodable image: no known image format (starts with {data[:8]!r})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on garbage
        raise ImageDecodeError(f"not a decodable image: {type(exc).__name__}: {exc}") from None
    w, h = im.size
    if w * h > max_pixels:
        raise ImageDecodeError(f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels}")
    return im


def decode_image(data: bytes, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int | None = None) -> np.ndarray:
    """Decode image bytes to uint8 HxWxC (C = channels), EXIF applied, modes normalised; min_side: see _decode_raw."""
    return normalize_channels(_decode_raw(data, max_pixels, min_side, channels), channels)


def decode_image_alpha(data: bytes, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS,
                       min_side: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """decode_image, plus the alpha plane (uint8 HxW) when the file has one; the image is still composited."""
    d = decode_with_header(data, channels, max_pixels, min_side)
    return d.image, d.alpha


@dataclass
class DecodedImage:
    """A decoded input: its pixels (composited on white) and what writing an output from it needs."""

    image: np.ndarray  # uint8 HxWxC; a large JPEG may be decoded smaller when min_side allows (_draft)
    icc: bytes | None
    format: str  # Pillow's format name of the input (JPEG, PNG, ...)
    width: int  # the input's full size, EXIF orientation applied, whatever size it was decoded at
    height: int
    alpha: np.ndarray | None = None  # the input's alpha plane (HxW), for outputs that can hold it


def decode_with_header(data: bytes, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS,
                       min_side: int | None = None) -> DecodedImage:
    """decode_image_alpha, plus the ICC profile, the format and the full display size, from one open of the bytes."""
    im = open_image(data, max_pixels)
    icc, fmt, (w, h) = im.info.get("icc_profile"), im.format or "", display_size(im)  # before a draft shrinks it
    a = _decode_opened(im, min_side, channels)
    alpha = np.ascontiguousarray(a[..., -1]) if a.shape[2] in (2, 4) else None
    return DecodedImage(normalize_channels(a, channels), icc, fmt, w, h, alpha)


def display_size(im) -> tuple[int, int]:
    """(width, height) of an opened, not yet drafted image as decoding shows it: EXIF orientation applied."""
    w, h = im.size
    # the same tag ImageOps.exif_transpose reads; 5..8 are the transposes and quarter turns
    return (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)


def _draft(im, min_side: int, channels: int) -> None:
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale (DCT domain), both sides still >= 2 * min_side.

    For inputs that are only shrunk to min_side afterwards (encoder centre crops): most of the decode is saved.
    2x, not 1x: the bicubic resize that follows still averages >= 2x2 decoded pixels per output pixel, so
    the result stays close to the full decode. The size asked is square, so it holds in the stored
    orientation and after exif_transpose alike.
    """
    if im.format not in ("JPEG", "MPO"):  # Pillow drafts JPEG only; other formats decode in full
        return
    if min(im.size) < 4 * min_side:  # not even 1/2 scale would keep 2 * min_side: decode exactly as before
        return
    # grey models: libjpeg gives the Y plane directly (no chroma decode, no colour conversion)
    mode = "L" if channels == 1 and im.mode == "RGB" else im.mode
    im.draft(mode, (2 * min_side, 2 * min_side))


def _decode_raw(data: bytes, max_pixels: int, min_side: int | None = None, channels: int = 3) -> np.ndarray:
    """Decode to uint8 HxWxC with C in 1..4 (alpha kept), EXIF orientation applied (first frame).

    min_side: the caller only needs the image shrunk to this shorter side, so a JPEG may be decoded
    smaller (see _draft); None decodes every pixel. max_pixels always applies to the full size.
    """
    return _decode_opened(open_image(data, max_pixels), min_side, channels)


def _decode_opened(im, min_side: int | None, channels: int) -> np.ndarray:
    """_decode_raw for an image open_image already opened (header read, nothing decoded yet)."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.seek(0)
            if min_side:
                _draft(im, min_side, channels)  # after seek: an MPO frame seek would reset the decoder
            im.load()
            # in place: the default returns a full copy even when there is nothing to rotate
            ImageOps.exif_transpose(im, in_place=True)
            return _to_uint8_array(im)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated data, bad EXIF, unsupported codec...
        raise ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from None


def load_image(path: str | os.PathLike, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int | None = None) -> np.ndarray:
    """Read and decode one image file (see decode_image)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_image(data, channels=channels, max_pixels=max_pixels, min_side=min_side)


FITS = ("crop", "squash")  # how an encoder's S×S input is made from a whole image


def fit_square(image: np.ndarray, size: int, fit: str = "crop") -> np.ndarray:
    """An encoder's S×S input (uint8 HxWxC in and out), made the same way for training and for inference.

    crop: resize the shorter side to `size` (bicubic) and cut out the centre; squash: resize the whole image to
    size×size, so nothing near the borders is lost (what copy detection needs: a crop of a photo must still
    look like the photo).
    """
    from PIL import Image

    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    h, w, c = image.shape
    if fit == "squash":
        nh, nw = size, size
    else:
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
    if (nh, nw) != (h, w):
        im = Image.fromarray(image[..., 0] if c == 1 else image)
        image = np.asarray(im.resize((nw, nh), Image.BICUBIC))
        if image.ndim == 2:
            image = image[..., None]
    y0, x0 = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(image[y0:y0 + size, x0:x0 + size])
