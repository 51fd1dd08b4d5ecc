"""Tiling: the tile plan covers the image once, and tiled predictions equal untiled ones exactly."""
from __future__ import annotations

import numpy as np
import pytest
from pipeline_models import photo, save

from pipeline.predictor import Predictor
from pipeline.tiling import plan_tiles, predict_tiled


@pytest.mark.parametrize("h,w,tile,halo", [(50, 70, 16, 2), (16, 16, 16, 3), (5, 300, 7, 1), (33, 1, 4, 0)])
def test_plan_covers_every_pixel_once(h, w, tile, halo):
    cover = np.zeros((h, w), int)
    for t in plan_tiles(h, w, tile, halo):
        cover[t.y0:t.y1, t.x0:t.x1] += 1
        assert t.ey0 == max(0, t.y0 - halo) and t.ex1 == min(w, t.x1 + halo)
        assert t.y1 - t.y0 <= tile and t.x1 - t.x0 <= tile
    assert (cover == 1).all()


def _store_model(store, name):
    from aeflow.store import ModelStore

    return Predictor(str(ModelStore(store).resolve(name).onnx_path()), "cpu", 1)


@pytest.mark.parametrize("name,tile", [("denoise", 7), ("denoise", 16), ("upscale-x2", 9), ("denoise-cnn", 11)])
def test_tiled_equals_untiled_onnx(store, name, tile):
    pred = _store_model(store, name)
    img = photo(45, 61, 7)
    whole = pred({"image": img[None]})["output"][0]
    tiled = predict_tiled(lambda x: pred({"image": x})["output"], img, tile, pred.info.halo, pred.info.scale, 4)
    assert tiled.shape == whole.shape == (45 * pred.info.scale, 61 * pred.info.scale, 3)
    np.testing.assert_array_equal(tiled, whole)


def test_too_small_halo_shows_seams(store):
    """The guard of the test above: with no context the seams differ, so equality is not vacuous."""
    pred = _store_model(store, "denoise")
    img = photo(40, 40, 8)
    whole = pred({"image": img[None]})["output"][0]
    tiled = predict_tiled(lambda x: pred({"image": x})["output"], img, 10, 0, 1)
    assert (tiled != whole).any()


def test_job_tiled_equals_untiled(store, tmp_path):
    from pipeline.runner import JobConfig, run_job

    src = tmp_path / "in"
    save(src / "big.png", photo(70, 90, 9))
    outs = {}
    for tile in (16, 512):
        out = tmp_path / f"out{tile}"
        s = run_job(JobConfig(job="upscale", in_dir=src, out_dir=out, model="upscale-x2", store=store,
                              runner="local", tile=tile, progress=False))
        assert s["counts"]["ok"] == 1
        from PIL import Image

        outs[tile] = np.asarray(Image.open(out / "big.png"))
    assert outs[16].shape == (140, 180, 3)
    np.testing.assert_array_equal(outs[16], outs[512])
