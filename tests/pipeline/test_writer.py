"""Writer: confinement to OUT_DIR, atomic writes, formats and ICC profiles."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from conftest import photo

from pipeline.writer import OutputPathError, confined_path, output_rel, tmp_name, write_image


@pytest.mark.parametrize("rel", ["../evil.png", "a/../../evil.png", "/etc/evil.png", "", "a//b.png",
                                 "_aeflow/manifest/x.png", "embeddings/x.png"])
def test_guard_refuses_escaping_or_reserved_paths(tmp_path, rel):
    out = (tmp_path / "out").resolve()
    out.mkdir()
    with pytest.raises(OutputPathError):
        confined_path(out, rel)
    assert not (tmp_path / "evil.png").exists()


def test_guard_refuses_symlinked_folder_leading_outside(tmp_path):
    out = (tmp_path / "out").resolve()
    outside = tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "sub").symlink_to(outside)
    with pytest.raises(OutputPathError, match="outside"):
        write_image(out, "sub/x.png", photo(8, 8))
    assert list(outside.iterdir()) == []


def test_symlinked_tmp_name_is_not_followed(tmp_path):
    out = (tmp_path / "out").resolve()
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, tmp_name(out / "x.png"))  # planted where the temp file would go
    write_image(out, "x.png", photo(8, 8))
    assert victim.read_text() == "keep me"
    assert (out / "x.png").is_file() and not os.path.lexists(tmp_name(out / "x.png"))


def test_output_rel_formats():
    assert output_rel("a/b.jpeg", "same") == "a/b.jpeg"
    assert output_rel("a/b.jpeg", "png") == "a/b.png"
    assert output_rel("x.tar.png", "webp") == "x.tar.webp"
    with pytest.raises(ValueError):
        output_rel("a.png", "gif")


def test_write_is_atomic_and_keeps_icc(tmp_path):
    from PIL import Image, ImageCms

    out = (tmp_path / "out").resolve()
    out.mkdir()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = photo(16, 20)
    for rel in ("p/x.jpg", "p/x.png", "p/x.webp"):
        n = write_image(out, rel, img, icc)
        assert (out / rel).stat().st_size == n
        im = Image.open(out / rel)
        assert im.size == (20, 16) and im.info.get("icc_profile") == icc
    assert np.array_equal(np.asarray(Image.open(out / "p/x.png")), img)  # PNG lossless
    assert not list(out.rglob("*.tmp"))
    q = Image.open(io.BytesIO((out / "p/x.jpg").read_bytes()))
    assert q.format == "JPEG"
