"""Bad inputs: each gives a correct output or a failed manifest row with a clear error; exit code 3.

One `aeflow denoise` run (local runner, box-blur model with a 5x5 receptive field) over a folder holding every
case; each test below checks one case's row and output. docs/reliability.md lists them with these verdicts.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aeflow.cli import main
from pipeline.manifest import iter_rows, load_state
from tests.conftest import make_photo
from tests.reliability.inputs import write_bad_inputs


class Run:
    """The job's outcome: exit code, latest row per input, summary, OUT_DIR."""

    def __init__(self, rc: int, out: Path):
        self.rc, self.out = rc, out
        self.rows = load_state(out)
        self.summary = json.loads((out / "_aeflow" / "summary.json").read_text())

    def ok(self, rel: str) -> np.ndarray:
        """Assert rel succeeded; return its decoded output."""
        row = self.rows[rel]
        assert row["status"] == "ok", row
        with Image.open(self.out / row["output"]) as im:
            assert (im.width, im.height) == (row["out_w"], row["out_h"])
            return np.asarray(im.convert("RGB"))

    def failed(self, rel: str, *words: str) -> str:
        """Assert rel failed with an error containing every word, and left no output; return the error."""
        row = self.rows[rel]
        assert row["status"] == "failed", row
        assert all(w in row["error"] for w in words), row["error"]
        assert not (self.out / rel).exists() or (self.out / rel).is_dir()
        return row["error"]


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> Run:
    """Run the job once; two files are changed between listing and reading (vanishes.png, swapped.png)."""
    import pipeline.runner

    src = write_bad_inputs(tmp_path_factory.mktemp("bad") / "in")
    out = src.parent / "out"
    real_plan = pipeline.runner.plan

    def plan_then_race(*args):
        for item in real_plan(*args):
            if getattr(item, "rel", None) == "vanishes.png":
                os.unlink(item.path)  # listed and planned, gone before the worker reads it
            elif getattr(item, "rel", None) == "swapped.png":
                os.unlink(item.path)
                os.mkfifo(item.path)  # a reader that opened it blindly would block forever
            yield item

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline.runner, "plan", plan_then_race)
        rc = main(["denoise", str(src), str(out), "--model", "denoise", "--store", str(store), "--runner", "local",
                   "--batch-size", "4", "--no-progress"])
    return Run(rc, out)


def test_job_finishes_with_exit_code_3_and_one_row_per_input(run):
    assert run.rc == 3 and run.summary["exit_code"] == 3
    assert sorted(run.rows) == sorted([
        "animated.gif", "bomb.png", "cmyk.jpg", "dangling.png", "exif_rotated.jpg", "fifo.png", "folder.jpg/inner.png",
        "good.jpg", "grey.png", "grey16.png", "grey_alpha.png", "one_pixel.png", "palette_transparent.png",
        "random.jpg", "rgb16.png", "rgba.png", "self_loop.png", "swapped.png", "text.png", "tiny_3x2.png",
        "truncated.jpg", "vanishes.png", "zero.jpg", "ünï cødé dir/фото 1 ☃.png"])
    rows = [r["path"] for r in iter_rows(run.out)]
    assert len(rows) == len(set(rows))  # no duplicates
    assert run.summary["counts"] == {"total": 24, "ok": 14, "failed": 10, "skipped": 0}
    assert not [p for p in run.out.rglob("*") if p.name.endswith(".tmp")]


def test_truncated_jpeg(run):
    err = run.failed("truncated.jpg", "ImageDecodeError")
    assert "runcated" in err  # Pillow's own words: "Truncated File Read" / "image file is truncated"


def test_zero_byte_file(run):
    run.failed("zero.jpg", "empty file (0 bytes)")


def test_random_bytes_named_jpg(run):
    run.failed("random.jpg", "not a decodable image")


def test_text_file_named_png(run):
    run.failed("text.png", "not a decodable image")


def test_decompression_bomb_refused_before_decoding(run):
    run.failed("bomb.png", "image too large, refused before decoding", "1600000000 pixels")


def test_16_bit_png_keeps_the_top_8_bits(run):
    out = run.ok("rgb16.png")
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - make_photo(24, 32, 7).astype(int)).mean() < 25  # a blur of the same photo
    assert run.ok("grey16.png").shape == (24, 32, 3)


def test_cmyk_jpeg_becomes_rgb(run):
    out = run.ok("cmyk.jpg")
    assert out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - make_photo(24, 32, 1).astype(int)).mean() < 30


@pytest.mark.parametrize("rel", ["rgba.png", "palette_transparent.png", "grey_alpha.png"])
def test_alpha_is_kept_and_colour_composited_on_white(run, rel):
    with Image.open(run.out / rel) as im:
        assert im.mode == "RGBA"  # the input's transparency comes back (docs/reliability.md, 'Alpha')
        alpha_out = np.asarray(im)[..., 3]
    src = run.out.parent / "in" / rel
    with Image.open(src) as im:
        alpha_in = np.asarray(im.convert("RGBA"))[..., 3]
    np.testing.assert_array_equal(alpha_out, alpha_in)
    if rel == "rgba.png":
        band = run.ok(rel)[2:-2, 2:5]  # inside the transparent band, out of the blur's reach of the borders
        assert band.min() >= 250  # the model saw the image composited on white


def test_grey_input_gives_grey_rgb_output(run):
    out = run.ok("grey.png").astype(int)
    assert out.shape == (24, 32, 3) and np.abs(out[..., 0] - out[..., 2]).max() <= 1


def test_exif_rotated_jpeg_comes_out_upright(run):
    out = run.ok("exif_rotated.jpg")
    assert out.shape == (40, 20, 3)  # stored 40x20 landscape, displayed 20x40 portrait
    top, bottom = out[:16].reshape(-1, 3).mean(0), out[24:].reshape(-1, 3).mean(0)
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # red above blue, as displayed


def test_animated_gif_first_frame_only(run):
    out = run.ok("animated.gif")
    with Image.open(run.out / "animated.gif") as im:
        assert getattr(im, "n_frames", 1) == 1
    mean = out.reshape(-1, 3).mean(0)
    assert mean[0] > 150 > mean[2]  # the first (red) frame


def test_one_pixel_and_smaller_than_receptive_field(run):
    assert run.ok("one_pixel.png").shape == (1, 1, 3)
    assert run.ok("tiny_3x2.png").shape == (2, 3, 3)


def test_unicode_and_spaces_in_names(run):
    assert run.ok("ünï cødé dir/фото 1 ☃.png").shape == (24, 32, 3)


def test_symlink_loop_and_dangling_symlink(run):
    run.failed("self_loop.png", "symlink loop")
    run.failed("dangling.png", "dangling symlink")
    assert not any(p.startswith("dir_loop") for p in run.rows)  # folder links are not followed


def test_unreadable_fifo_is_refused_without_blocking(run):
    run.failed("fifo.png", "not a regular file (FIFO)")
    run.failed("swapped.png", "cannot read: not a regular file")  # became a FIFO after the listing


def test_file_deleted_between_listing_and_reading(run):
    run.failed("vanishes.png", "cannot read", "No such file")


def test_directory_named_like_an_image_is_a_folder(run):
    assert "folder.jpg" not in run.rows
    run.ok("folder.jpg/inner.png")


def test_output_name_collision_after_format_change(store, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(make_photo(16, 16, 1)).save(src / "x.jpg")
    Image.fromarray(make_photo(16, 16, 2)).save(src / "x.png")
    rc = main(["denoise", str(src), str(out), "--model", "denoise", "--store", str(store), "--runner", "local",
               "--format", "png", "--no-progress"])
    rows = load_state(out)
    assert rc == 3
    assert rows["x.jpg"]["status"] == "ok" and rows["x.jpg"]["output"] == "x.png"
    assert rows["x.png"]["status"] == "failed" and "collides with the output of x.jpg" in rows["x.png"]["error"]
    with Image.open(out / "x.png") as im:  # the first one's output, never overwritten by the second
        assert np.abs(np.asarray(im).astype(int) - make_photo(16, 16, 1).astype(int)).mean() < 30
