"""bench/quality.py: metric functions against known values, the held-out photo folder, one end-to-end smoke run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import _quality_metrics as qm
from bench import _quality_tasks
from bench._quality_data import make_crops, make_photos
from tests.conftest import make_photo
from tests.serving.helpers import pipeline_models

REPO = Path(__file__).resolve().parent.parent


def _grey(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A random uint8 image with three equal channels, values in [20, 200] (room for offsets)."""
    g = np.random.default_rng(seed).integers(20, 200, (h, w), dtype=np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


@pytest.mark.parametrize("scale", [2, 4])
def test_y_metrics_ignore_the_cropped_border(scale):
    ref = _grey(32, 40)
    img = ref.copy()
    img[:scale] = 0  # damage only the border the metric crops
    img[-scale:] = 255
    img[:, :scale] = 7
    img[:, -scale:] = 99
    assert qm.psnr_y(ref, img, scale) == math.inf
    assert qm.ssim_y(ref, img, scale) == pytest.approx(1.0)
    assert qm.psnr_y(ref, img, 0) < 30  # and the border does count without the crop
    img[scale, scale] = 0  # one pixel just inside the border
    assert qm.psnr_y(ref, img, scale) < math.inf


@pytest.mark.parametrize("d", [1, 5, 20])
def test_constant_offset_gives_the_expected_db(d):
    ref = _grey(24, 24, seed=d)
    img = ref + np.uint8(d)
    # RGB PSNR: every value off by d
    assert qm.psnr(ref, img) == pytest.approx(20 * math.log10(255 / d))
    # Y: an offset d on R, G and B moves Y by d * (65.481 + 128.553 + 24.966) / 255 = d * 219 / 255
    assert qm.psnr_y(ref, img, 2) == pytest.approx(20 * math.log10(255 / (d * 219 / 255)))
    y = qm.y_channel(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))
    assert y[0, 0] == pytest.approx(16) and y[0, 1] == pytest.approx(235)


def test_knn_and_precision_on_separated_clusters_and_shuffled_labels():
    rng = np.random.default_rng(0)
    classes, per = 10, 30
    centres = rng.normal(0, 100, (classes, 16))
    y = np.repeat(np.arange(classes), per)
    x = centres[y] + rng.normal(0, 0.1, (len(y), 16))
    assert qm.knn_accuracy(x, y) == 1.0
    assert qm.precision_at_k(x, y, 10) == 1.0
    shuffled = rng.permutation(y)
    assert abs(qm.knn_accuracy(x, shuffled) - 1 / classes) < 0.08
    assert abs(qm.precision_at_k(x, shuffled, 10) - 1 / classes) < 0.04


def test_precision_excludes_the_query_itself():
    x = np.array([[0.0], [0.0], [10.0], [10.0]])  # duplicates: distance 0 to a neighbour, not only to itself
    assert qm.precision_at_k(x, np.array([0, 0, 1, 1]), 1) == 1.0
    assert qm.precision_at_k(x, np.array([0, 1, 0, 1]), 1) == 0.0


def test_held_out_folder_is_12_deterministic_crops_of_held_out_photos(tmp_path, monkeypatch):
    import skimage.data

    from models.data import HELDOUT_PHOTOS, TRAIN_PHOTOS

    def refuse(*_a, **_k):
        raise AssertionError("a reserved or training photo was loaded")

    for name in ("chelsea", "cat", "coffee", "stereo_motorcycle", *TRAIN_PHOTOS):
        monkeypatch.setattr(skimage.data, name, refuse)
    a = make_photos(tmp_path / "a")
    b = make_photos(tmp_path / "b")
    names = sorted(p.name for p in a)
    assert len(a) == 12 and names == sorted(p.name for p in b)
    assert {n.rsplit("-", 1)[0] for n in names} == set(HELDOUT_PHOTOS) | {"aero", "ascent"}
    arrays = {}
    for p in a:
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()
        im = Image.open(p)
        assert im.size == (256, 256) and im.mode == "RGB"
        arrays[p.name] = np.asarray(im)
    for src in HELDOUT_PHOTOS + ("aero", "ascent"):  # two different crops per source
        assert not np.array_equal(arrays[f"{src}-0.png"], arrays[f"{src}-1.png"])


def test_crops_of_a_photo_folder_are_centred_deterministic_and_skip_small_photos(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    big = make_photo(300, 280, seed=3)
    Image.fromarray(big).save(src / "pkg" / "big.jpg", quality=95)
    Image.fromarray(make_photo(100, 100, seed=4)).save(src / "small.png")
    a, b = make_crops(src, tmp_path / "a"), make_crops(src, tmp_path / "b")
    assert [p.relative_to(tmp_path / "a").as_posix() for p in a] == ["pkg/big.png"]
    assert a[0].read_bytes() == b[0].read_bytes()
    from aeflow.imageio import load_image

    decoded = load_image(src / "pkg" / "big.jpg", channels=3)
    assert np.array_equal(np.asarray(Image.open(a[0])), decoded[22:278, 12:268])
    with pytest.raises(FileNotFoundError, match="at least 512x512"):
        make_crops(src / "pkg", tmp_path / "c", size=512)


def test_smoke_run_writes_report_and_tables(tmp_path):
    store = pipeline_models().build_store(tmp_path / "store")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(make_photo(64, 64, seed=i)).save(photos / f"p{i}.png")
    out, pics = tmp_path / "out", tmp_path / "pics"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    r = subprocess.run([sys.executable, "-m", "bench.quality", str(photos), "--store", str(store), "--out", str(out),
                        "--pictures", str(pics), "--embed-limit", "60", "--runner", "local",
                        # a name neither the store nor the shipped models hold: reported, not fatal
                        "--upscale-models", "upscale-x2,nothing-x4",
                        # the same models as "previous" ones: the comparison rows, wired end to end
                        "--denoise-previous", "denoise:1", "--upscale-previous", "upscale-x2:1",
                        "--speed-mp", "0.05", "--fp32-too"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    rep = json.loads((out / "quality.json").read_text())
    md = (out / "quality.md").read_text()

    assert {"date", "machine", "argv", "config", "models", "photos", "denoise", "upscale", "embed",
            "notes", "bench_seconds", "pictures"} <= set(rep)
    assert rep["photos"]["count"] == 2
    assert rep["models"]["denoise"]["id"] == "denoise:1" and len(rep["models"]["denoise"]["sha256"]) == 64
    assert rep["models"]["upscale x4"]["status"] == "missing"

    assert set(rep["denoise"]) == {"15", "25", "50"}
    for e in rep["denoise"].values():
        ms = e["methods"]
        assert set(ms) == {"noisy", "nlm", "tv", "wavelet", "bm3d", "previous:denoise:1", "model", "model_fp32"}
        assert ms["model_fp32"]["cli"]["precision"] == "fp32" and ms["model_fp32"]["status"] == "ok"
        # CBM3D runs where the bench extra is installed, and is reported missing elsewhere
        assert ("psnr" in ms["bm3d"]) == _quality_tasks.bm3d_available()
        keys = ("nlm", "tv", "wavelet", "model", "previous:denoise:1") + (("bm3d",) if "psnr" in ms["bm3d"] else ())
        for key in keys:
            assert math.isfinite(ms[key]["psnr"]) and 0 < ms[key]["ssim"] <= 1 and ms[key]["s_per_mp"] > 0
            assert set(ms[key]["per_image"]) == {"p0.png", "p1.png"}
        assert len(ms["nlm"]["grid"]) == 5 and str(e["nlm_best_h"]) in ms["nlm"]["grid"]
        assert ms["model"]["s_per_mp_job"] > 0 and "aeflow" in ms["model"]["cli"]["command"]
        assert math.isfinite(e["model_minus_best_nlm_db"])
        assert len(ms["tv"]["grid"]) == 5 and e["best_classic"] in ("nlm", "tv", "wavelet")
        best = max(ms[k]["psnr"] for k in ("nlm", "tv", "wavelet"))
        assert e["model_minus_best_classic_db"] == pytest.approx(ms["model"]["psnr"] - best)
        # the same model twice gives the same outputs
        assert ms["previous:denoise:1"]["psnr"] == pytest.approx(ms["model"]["psnr"])

    x2, x4 = rep["upscale"]["2"], rep["upscale"]["4"]
    for key in ("bicubic", "lanczos", "model"):
        assert math.isfinite(x2["methods"][key]["psnr_y"]) and x2["methods"][key]["s_per_mp"] > 0
    assert math.isfinite(x2["model_minus_bicubic_db"])
    assert x2["methods"]["previous:upscale-x2:1"]["psnr_y"] == pytest.approx(x2["methods"]["model"]["psnr_y"])
    assert rep["speed"]["denoise"]["s_per_mp_job"] > 0 and rep["speed"]["upscale x2"]["output_megapixels"] > 0.04
    assert rep["speed"]["upscale x4"]["status"] == "missing"
    assert x4["methods"]["model"]["status"] == "missing" and "model_minus_bicubic_db" not in x4
    assert math.isfinite(x4["methods"]["lanczos"]["psnr_y"])

    assert set(rep["embed"]) == {"mnist", "digits"}
    for e in rep["embed"].values():
        assert e["n"] == 60
        ms = e["methods"]
        assert ms["ae"]["dim"] == ms["pca"]["dim"] == 12 and ms["pixels"]["dim"] == 784  # the test ae: S=8, D=12
        for key in ("ae", "pca", "pca_l2", "pixels"):
            assert 0 <= ms[key]["knn_acc"] <= 1 and 0 <= ms[key]["p_at_10"] <= 1
        assert math.isfinite(e["ae_minus_pca"]["knn_acc"])

    for title in ("### Denoising", "### Upscaling", "### Embeddings", "### Speed", "model − best of NLM, TV, wavelet",
                  "TV Chambolle", "CBM3D", "previous model `denoise:1`", "model − bicubic",
                  "ae − best PCA", "PCA, L2-normalised", "**missing**", "not trained on 28x28 grey MNIST"):
        assert title in md, title
    assert sorted(Path(p).name for p in rep["pictures"]) == ["denoise-sigma25.png", "upscale-x2.png",
                                                              "upscale-x4.png"]
    assert all(Path(p).stat().st_size < 300_000 for p in rep["pictures"])


def test_classic_outputs_are_cached_by_method_and_input(tmp_path, monkeypatch):
    monkeypatch.setenv(_quality_tasks.CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def blur(a):
        calls.append(1)
        return (a // 2).astype(np.uint8)
    inputs = {"a.png": _grey(8, 8, 1), "b.png": _grey(8, 8, 2)}
    score = lambda n, img: {"psnr": qm.psnr(inputs[n], img)}  # noqa: E731
    first = _quality_tasks._classic(sorted(inputs), inputs, blur, score, "half")
    again = _quality_tasks._classic(sorted(inputs), inputs, blur, score, "half")
    assert len(calls) == 2 and first[0] == again[0] and first[2] == pytest.approx(again[2])
    assert all(np.array_equal(first[1][n], again[1][n]) for n in inputs)
    _quality_tasks._classic(sorted(inputs), inputs, blur, score, "other")  # another method: computed
    assert len(calls) == 4
