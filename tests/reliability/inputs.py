"""Builders of awkward input files for the reliability suite (each returns the path it wrote)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import make_photo


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def flat_png(path: Path, w: int, h: int, rgb=(120, 130, 140), rows_per_chunk: int = 256) -> Path:
    """A w×h RGB PNG of one colour, written row band by row band (never the whole image in memory)."""
    z = zlib.compressobj(9)
    row = b"\x00" + bytes(rgb) * w  # filter type 0 + pixels
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        for y in range(0, h, rows_per_chunk):
            data = z.compress(row * min(rows_per_chunk, h - y))
            if data:
                f.write(_chunk(b"IDAT", data))
        f.write(_chunk(b"IDAT", z.flush()) + _chunk(b"IEND", b""))
    return path


def bomb_png(path: Path, side: int = 40_000) -> Path:
    """A 200-byte PNG whose header claims side×side pixels (1.6 gigapixels for the default)."""
    z = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + _chunk(b"IDAT", z) + _chunk(b"IEND", b""))
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """Stored 40 wide × 20 high, left half red, right half blue, EXIF orientation 6 (display: rotate 90° CW)."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (220, 30, 30)
    a[:, 20:] = (30, 30, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, quality=95, exif=exif.tobytes())
    return path


def animated_gif(path: Path) -> Path:
    """Two 24×24 frames: red, then blue."""
    frames = [Image.new("RGB", (24, 24), c) for c in ((220, 30, 30), (30, 30, 220))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def rgb16_png(path: Path) -> Path:
    """A 16-bit-per-channel RGB PNG (written with OpenCV, which Pillow cannot do)."""
    import cv2

    a = make_photo(24, 32, 7).astype(np.uint16) * 257  # 8-bit values spread over 16 bits
    cv2.imwrite(str(path), a[..., ::-1])  # OpenCV wants BGR
    return path


def write_bad_inputs(d: Path) -> Path:
    """The issue's awkward inputs, one file (or link, FIFO, folder) each; see test_bad_inputs.py for the verdicts."""
    import os

    d.mkdir(parents=True, exist_ok=True)
    photo = make_photo(24, 32, 1)
    buf = d / "good.jpg"
    Image.fromarray(photo).save(buf, quality=90)
    data = buf.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "zero.jpg").write_bytes(b"")
    (d / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    (d / "text.png").write_text("this is a text file, not a PNG\n")
    bomb_png(d / "bomb.png")
    rgb16_png(d / "rgb16.png")
    Image.fromarray((make_photo(24, 32, 8)[..., 0].astype(np.uint16) * 257)).save(d / "grey16.png")
    Image.fromarray(photo).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    pal = Image.fromarray(photo).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(d / "palette_transparent.png", transparency=0)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:, :8, 3] = 0  # a fully transparent left band
    Image.fromarray(rgba).save(d / "rgba.png")
    Image.fromarray(photo[..., 0]).save(d / "grey.png")
    grey_alpha = np.dstack([photo[..., 0], np.full(photo.shape[:2], 128, np.uint8)])
    Image.fromarray(grey_alpha, "LA").save(d / "grey_alpha.png")
    exif_rotated_jpeg(d / "exif_rotated.jpg")
    animated_gif(d / "animated.gif")
    Image.fromarray(photo[:1, :1]).save(d / "one_pixel.png")
    Image.fromarray(photo[:2, :3]).save(d / "tiny_3x2.png")  # smaller than the 5x5 receptive field
    (d / "ünï cødé dir").mkdir()
    Image.fromarray(photo).save(d / "ünï cødé dir" / "фото 1 ☃.png")
    os.symlink("self_loop.png", d / "self_loop.png")  # a symlink loop
    os.symlink(".", d / "dir_loop")  # a folder link back to its parent: never followed
    os.symlink("missing.png", d / "dangling.png")
    os.mkfifo(d / "fifo.png")  # stands in for an unreadable file (tests run as root: chmod 000 reads fine)
    Image.fromarray(photo).save(d / "vanishes.png")  # deleted between listing and reading (see the test)
    Image.fromarray(photo).save(d / "swapped.png")  # replaced by a FIFO between listing and reading
    (d / "folder.jpg").mkdir()
    Image.fromarray(photo).save(d / "folder.jpg" / "inner.png")
    return d
