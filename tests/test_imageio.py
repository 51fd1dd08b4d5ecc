"""Tests for aeflow/imageio.py: listing and decoding of awkward images."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from aeflow.imageio import ImageDecodeError, decode_image, display_size, iter_image_paths, load_image, open_image
from tests.conftest import make_photo


def _png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_listing_is_recursive_sorted_and_skips_non_images(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "dir.jpg").mkdir()  # a directory named like an image
    for p in ["z.png", "a/y.JPG", "b/x.webp", "notes.txt", "a/c.tiff"]:
        (tmp_path / p).write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "b" / "loop")  # a symlink loop must not be followed
    got = [p.relative_to(tmp_path).as_posix() for p in iter_image_paths(tmp_path)]
    # files of a folder first, then its subfolders, each in name order
    assert got == ["z.png", "a/c.tiff", "a/y.JPG", "b/x.webp"]
    assert "notes.txt" not in got and "dir.jpg" not in got


def test_exif_rotation_is_applied():
    a = make_photo(20, 40, 1)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = _png_bytes(im, format="JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(data)
    assert out.shape == (40, 20, 3)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_modes_are_normalised_to_rgb_uint8(mode):
    a = make_photo(16, 24, 2)
    if mode == "I;16":
        im = Image.fromarray((a[..., 0].astype(np.uint16) * 257))
        assert im.mode.startswith("I;16")
    else:
        im = Image.fromarray(a).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(_png_bytes(im, format=fmt))
    assert out.dtype == np.uint8 and out.shape == (16, 24, 3)
    if mode == "I;16":  # the top 8 bits survive, not a saturated white image
        np.testing.assert_allclose(out[..., 0], a[..., 0], atol=1)


def test_palette_with_transparency_composites_on_white():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.info["transparency"] = 0
    out = decode_image(_png_bytes(im, transparency=0))
    assert (out == 255).all()


def test_grey_request_gives_one_channel():
    out = decode_image(_png_bytes(Image.fromarray(make_photo(8, 8, 3))), channels=1)
    assert out.shape == (8, 8, 1)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue())
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


@pytest.mark.parametrize("data,msg", [
    (b"", "empty"),
    (b"hello, I am text", "not a decodable image"),
    (os.urandom(300), "not a decodable image"),
])
def test_bad_bytes_raise_clear_errors(data, msg):
    with pytest.raises(ImageDecodeError, match=msg):
        decode_image(data)


def test_truncated_jpeg_raises():
    data = _png_bytes(Image.fromarray(make_photo(64, 64, 4)), format="JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_refused_before_decoding():
    data = _png_bytes(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(data, max_pixels=1_000_000)


def test_load_image_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read"):
        load_image(tmp_path / "gone.png")


def _jpeg(a: np.ndarray, **kw) -> bytes:
    return _png_bytes(Image.fromarray(a), format="JPEG", quality=90, **kw)


@pytest.mark.parametrize("channels", [1, 3])
def test_min_side_decodes_a_large_jpeg_smaller_but_at_least_twice_min_side(channels):
    data = _jpeg(make_photo(1024, 1024, 5))
    full = decode_image(data, channels)
    small = decode_image(data, channels, min_side=28)
    assert full.shape == (1024, 1024, channels)
    assert small.shape[2] == channels and 56 <= min(small.shape[:2]) < 1024
    # the same picture, only smaller: compare with the full decode shrunk to the same size
    ref = np.asarray(Image.fromarray(full[..., 0] if channels == 1 else full).resize(small.shape[1::-1], Image.BOX))
    assert np.abs(ref.astype(np.int16).reshape(small.shape) - small).mean() < 3


def test_min_side_leaves_png_and_small_jpeg_untouched():
    a = make_photo(256, 256, 6)
    png = _png_bytes(Image.fromarray(a))
    assert np.array_equal(decode_image(png, min_side=28), decode_image(png))
    small = _jpeg(a[:100, :100])  # < 4 * 28: no downscale fits, decoded exactly as without min_side
    assert np.array_equal(decode_image(small, min_side=28), decode_image(small))
    assert np.array_equal(decode_image(small, 1, min_side=28), decode_image(small, 1))


def test_min_side_keeps_exif_orientation():
    a = make_photo(512, 1024, 7)
    a[:64, :64] = (255, 0, 0)  # a marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display: the marker ends top-right
    data = _jpeg(a, exif=exif.tobytes())
    full = decode_image(data)
    small = decode_image(data, min_side=28)
    assert full.shape == (1024, 512, 3)
    assert small.shape[0] > small.shape[1] and min(small.shape[:2]) >= 56 and small.shape[1] < 512
    h, w = small.shape[:2]
    corner = small[: h // 16, w - w // 8:].reshape(-1, 3).mean(0)
    assert corner[0] > 200 and corner[1] < 60 and corner[2] < 60
    assert display_size(open_image(data)) == (512, 1024)


def test_min_side_still_refuses_bombs_by_their_full_size():
    data = _jpeg(np.zeros((1200, 1000, 3), np.uint8))
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(data, max_pixels=1_000_000, min_side=28)
