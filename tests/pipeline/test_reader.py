"""Reader: streamed listing, planning for resume/incremental/collisions, encoder preprocessing."""
from __future__ import annotations

import types

import numpy as np
import pytest
from pipeline_models import photo, save

from aeflow.imageio import decode_with_header, fit_square
from pipeline.reader import PlanSettings, Task, iter_listing, plan, read_bytes


def test_listing_is_a_stream_and_excludes_out_dir(tmp_path):
    src = tmp_path / "in"
    save(src / "a.png", photo(8, 8))
    save(src / "out" / "a.png", photo(8, 8))
    it = iter_listing(src, exclude=src / "out")
    assert isinstance(it, types.GeneratorType)
    assert [(rel, problem) for _, rel, problem in it] == [("a.png", None)]


def test_plan_skips_done_redoes_changed_and_flags_collisions(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.jpg", photo(8, 8))
    save(src / "a.png", photo(8, 8))
    save(src / "b.png", photo(8, 8))
    save(src / "c.png", photo(8, 8))
    save(out / "b.png", photo(8, 8))
    save(out / "c.png", photo(8, 8))
    st = {p.name: p.stat() for p in src.iterdir()}
    state = {
        "b.png": {"path": "b.png", "status": "ok", "job": "denoise", "model_sha256": "S", "output": "b.png",
                  "in_bytes": st["b.png"].st_size, "mtime_ns": st["b.png"].st_mtime_ns},
        "c.png": {"path": "c.png", "status": "ok", "job": "denoise", "model_sha256": "S", "output": "c.png",
                  "in_bytes": st["c.png"].st_size, "mtime_ns": st["c.png"].st_mtime_ns - 1},  # changed since
    }
    items = list(plan(src, out, PlanSettings("denoise", "png", "S"), state))
    by = {(i.rel if isinstance(i, Task) else i["path"]): i for i in items}
    assert isinstance(by["a.jpg"], Task) and by["a.jpg"].out == "a.png"
    assert by["a.png"]["status"] == "failed" and "collides" in by["a.png"]["error"]
    assert by["b.png"]["status"] == "skipped"
    assert isinstance(by["c.png"], Task)
    # another model: everything is redone; --overwrite too
    other = {i.rel for i in plan(src, out, PlanSettings("denoise", "png", "T"), state) if isinstance(i, Task)}
    assert other == {"a.jpg", "b.png", "c.png"}
    redo = [i for i in plan(src, out, PlanSettings("denoise", "png", "S", overwrite=True), state)
            if isinstance(i, Task)]
    assert {t.rel for t in redo} == {"a.jpg", "b.png", "c.png"}


def test_center_square_and_decode(tmp_path):
    img = photo(30, 60)
    sq = fit_square(img, 8)
    assert sq.shape == (8, 8, 3) and sq.dtype == np.uint8
    assert fit_square(photo(8, 8), 8).shape == (8, 8, 3)
    p = save(tmp_path / "g.png", img[..., 0])
    d = decode_with_header(read_bytes(str(p)), 1)
    a = d.image
    assert a.shape == (30, 60, 1) and d.icc is None and d.format == "PNG" and (d.width, d.height) == (60, 30)
    assert fit_square(a, 8).shape == (8, 8, 1)
    squashed = fit_square(img, 8, "squash")  # the whole 30x60 image in 8x8: both halves are kept
    assert squashed.shape == (8, 8, 3) and not np.array_equal(squashed, sq)
    with pytest.raises(ValueError, match="fit"):
        fit_square(img, 8, "stretch")


def test_encoder_read_drafts_large_jpegs_close_to_the_full_decode(tmp_path):
    def read_input(path, channels, min_side=None):
        d = decode_with_header(read_bytes(path), channels, min_side=min_side)
        return d.image, d.icc, d.alpha, (d.width, d.height)

    p = save(tmp_path / "big.jpg", photo(1024, 1024, 3), quality=90)
    full, _, _, size = read_input(str(p), 3)  # image2image reads: every pixel
    small, _, _, small_size = read_input(str(p), 3, min_side=28)  # an encoder with S = 28
    assert full.shape == (1024, 1024, 3) and size == small_size == (1024, 1024)  # the file's size, not the decode's
    assert 56 <= min(small.shape[:2]) < 1024
    diff = np.abs(fit_square(full, 28).astype(np.int16) - fit_square(small, 28))
    assert diff.mean() < 3
    png = save(tmp_path / "big.png", photo(256, 256, 3))
    assert np.array_equal(read_input(str(png), 3, min_side=28)[0], read_input(str(png), 3)[0])
