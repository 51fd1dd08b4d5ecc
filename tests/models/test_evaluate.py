"""Tests for models/evaluate.py and models/pictures.py on tiny trained checkpoints."""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluate import MAIN_METRIC, evaluate_model, y_channel
from models.pictures import make_pictures
from models.train import TrainSettings, train_model


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """One tiny trained checkpoint per kind: image models on a generated folder, digit models on builtin:digits."""
    from PIL import Image

    from tests.conftest import make_photo

    root = tmp_path_factory.mktemp("evaldata")
    for i in range(4):
        Image.fromarray(make_photo(40, 48, seed=i)).save(root / f"{i}.png")
    runs = {}
    for kind in MAIN_METRIC:
        if kind in ("denoise", "upscale", "photo-ae"):
            s = TrainSettings(kind=kind, data=str(root), epochs=1, steps_per_epoch=2, batch_size=4,
                              patch_size=16, size="tiny", val_fraction=0.25)
        else:
            s = TrainSettings(kind=kind, data="builtin:digits", epochs=1, size="tiny", limit=150,
                              latent_dim=2 if kind in ("vae", "aae") else 4)
        runs[kind] = train_model(s, root.parent / f"run-{kind}", progress=False).checkpoint
    return runs


@pytest.mark.parametrize("kind", list(MAIN_METRIC))
def test_metrics_have_the_main_metric_and_are_finite(tiny_runs, kind):
    m = evaluate_model(tiny_runs[kind])
    key, _ = MAIN_METRIC[kind]
    assert isinstance(m[key], float) and math.isfinite(m[key])
    if kind == "denoise":
        for s in (15, 25, 50):
            for k in ("psnr", "ssim", "noisy_psnr", "noisy_ssim"):
                assert math.isfinite(m[f"{k}_{s}"])
        assert m["noisy_psnr_15"] > m["noisy_psnr_25"] > m["noisy_psnr_50"]  # more noise, lower PSNR
    elif kind == "upscale":
        assert m["psnr_gain"] == pytest.approx(m["psnr_y"] - m["bicubic_psnr_y"])
    elif kind == "photo-ae":  # 2 validation photos and their quarters, 6 edited copies of each searched among them
        assert m["copy_originals"] == 10 and m["copy_queries"] == 60 and m["recon_mse"] > 0
        assert 0 <= m["copy_recall_at_1"] <= m["copy_recall_at_5"] <= 1
        assert 0 <= m["copy_recall_at_p90"] <= 1 and m["copy_recall_at_p90"] == m[key]
    elif kind == "ae":
        assert 0 <= m["knn_acc"] <= 1 and 0 <= m["pca_knn_acc"] <= 1 and m["pca_dim"] == 4
        assert m["recon_mse"] > 0
    elif kind == "aae":
        assert 0 <= m["knn_acc"] <= 1 and 0 <= m["pca_knn_acc"] <= 1 and m["pca_dim"] == 2
        assert m["recon_mse"] > 0 and 0 <= m["disc_acc"] <= 1
        assert m["prior_mmd"] > m["prior_mmd_floor"]  # one epoch on 150 digits is far from the prior
        assert m["latent_mean_err"] >= 0 and m["latent_cov_err"] >= 0
    else:
        assert m["elbo"] == pytest.approx(-(m["recon"] + m["kl"]))
        assert m["kl"] >= 0


def test_evaluation_is_deterministic_and_accepts_other_data(tiny_runs):
    a = evaluate_model(tiny_runs["denoise"], seed=1)
    assert a == evaluate_model(tiny_runs["denoise"], seed=1)
    b = evaluate_model(tiny_runs["ae"], data="builtin:digits", limit=60)
    assert b["eval_data"] == "builtin:digits" and b["num_samples"] == 18  # 30% of 60


def test_y_channel():
    img = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    np.testing.assert_allclose(y_channel(img)[0], [16.0, 235.0])


@pytest.mark.parametrize("kind,expected", [
    ("denoise", {"reconstructions.png", "training_curves.png"}),
    ("vae", {"reconstructions.png", "training_curves.png", "latent_scatter.png", "latent_manifold.png"}),
    ("aae", {"reconstructions.png", "training_curves.png", "latent_scatter.png", "latent_manifold.png"}),
    ("photo-ae", {"reconstructions.png", "training_curves.png", "copy_search.png"}),
])
def test_pictures_are_pngs(tiny_runs, tmp_path, kind, expected):
    files = make_pictures(tiny_runs[kind], tmp_path)
    assert {p.split("/")[-1] for p in files} == expected
    for p in files:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_recall_at_precision_picks_the_global_threshold_that_keeps_90_percent_true():
    from models.evaluate import recall_at_precision

    # 10 queries, 3 originals; query i is a copy of original i % 3
    source = np.arange(10) % 3
    sims = np.full((10, 3), 0.1)
    sims[np.arange(10), source] = np.linspace(0.95, 0.5, 10)  # true pairs, best first
    sims[9, (source[9] + 1) % 3] = 0.88  # one false pair scores high, another just above the last true pair
    sims[0, 1] = 0.52
    recall, thr = recall_at_precision(sims, source, 0.9)
    # down to 0.55: 9 true of 10 reported; at 0.5 the tenth true pair comes with the second false one (10/12)
    assert recall == 0.9 and thr == pytest.approx(sims[8, source[8]])
    assert recall_at_precision(sims, source, 1.0) == (0.2, pytest.approx(sims[1, source[1]]))
    assert recall_at_precision(np.zeros((2, 2)) + np.eye(2)[::-1], np.arange(2), 0.9) == (0.0, None)
