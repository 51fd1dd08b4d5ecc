"""Tests for models/train.py: settings validation, a tiny run per data shape, early stopping and resume."""
from __future__ import annotations

import math

import pytest

from models.train import TrainSettings, _should_stop, lr_at, model_config, train_model

TINY_DIGITS = dict(data="builtin:digits", size="tiny", limit=100, batch_size=32)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="unknown kind"):
        TrainSettings(kind="gan")
    with pytest.raises(ValueError, match="size"):
        TrainSettings(kind="ae", size="huge")
    with pytest.raises(ValueError, match="latent-dim"):
        TrainSettings(kind="denoise", latent_dim=8)
    with pytest.raises(ValueError, match="scale"):
        TrainSettings(kind="upscale", scale=3)
    with pytest.raises(ValueError, match="multiple of scale"):
        TrainSettings(kind="upscale", scale=4, patch_size=18)
    with pytest.raises(TypeError):
        TrainSettings(kind="ae", epoch=3)  # a misspelled setting is an error, not ignored
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainSettings(kind="ae", lr_schedule="cosin")
    with pytest.raises(ValueError, match="synthetic"):
        TrainSettings(kind="ae", synthetic=4)
    with pytest.raises(ValueError, match="dilation"):
        TrainSettings(kind="upscale", dilation=2)


def test_dilation_setting_reaches_the_denoiser():
    from models.registry import create_model
    from models.train import model_config

    s = TrainSettings(kind="denoise", dilation=4)
    assert model_config(s) == {"max_dilation": 4}
    assert create_model("denoise", s.size, **model_config(s)).halo == 20
    assert model_config(TrainSettings(kind="denoise")) == {}


def test_cosine_schedule_decays_from_lr_to_zero_and_constant_stays():
    cos = TrainSettings(kind="denoise", lr=1e-3, lr_schedule="cosine")
    assert lr_at(cos, 0, 100) == pytest.approx(1e-3)
    assert lr_at(cos, 50, 100) == pytest.approx(5e-4)
    assert lr_at(cos, 100, 100) == pytest.approx(0.0, abs=1e-12)
    steps = [lr_at(cos, i, 100) for i in range(101)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))
    assert lr_at(TrainSettings(kind="denoise", lr=1e-3), 77, 100) == 1e-3


def test_early_stopping_rule():
    assert not _should_stop(0, 3)
    assert not _should_stop(2, 3)
    assert _should_stop(3, 3)
    assert _should_stop(1, 0) and not _should_stop(0, 0)


def test_patch_training_writes_best_and_last(photo_dir, tmp_path):
    s = TrainSettings(kind="upscale", data=str(photo_dir), epochs=1, steps_per_epoch=2, batch_size=4,
                      patch_size=16, size="tiny", val_fraction=0.3)
    with pytest.warns(UserWarning, match="broken.jpg"):
        r = train_model(s, tmp_path / "w", progress=False)
    assert r.checkpoint.is_file() and r.last_checkpoint.is_file() and r.device == "cpu"
    assert len(r.history) == 1 and math.isfinite(r.history[0]["val_loss"])
    assert r.data["split"]["by"] == "image" and r.data["num_images"] == 5


def test_resume_continues_at_the_next_epoch(tmp_path):
    from models.checkpoint import load_checkpoint

    first = train_model(TrainSettings(kind="ae", epochs=1, latent_dim=4, **TINY_DIGITS), tmp_path / "a",
                        progress=False)
    assert [h["epoch"] for h in first.history] == [1]
    ck1 = load_checkpoint(first.last_checkpoint)
    again = train_model(TrainSettings(kind="ae", epochs=3, latent_dim=4, **TINY_DIGITS), tmp_path / "b",
                        resume=first.last_checkpoint, progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert again.history[0] == first.history[0]  # the first epoch is carried over, not redone
    ck = load_checkpoint(again.last_checkpoint)
    assert ck["epoch"] == 3 and ck["optimizer"]["state"]  # Adam moments travelled with the run
    assert ck1["optimizer"]["state"]
    with pytest.raises(ValueError, match="cannot resume"):
        train_model(TrainSettings(kind="vae", epochs=2, **TINY_DIGITS), tmp_path / "c",
                    resume=first.last_checkpoint, progress=False)


def test_vae_loss_decreases_on_digits(tmp_path):
    r = train_model(TrainSettings(kind="vae", epochs=2, lr=3e-3, **TINY_DIGITS), tmp_path, progress=False)
    assert r.history[1]["train_loss"] < r.history[0]["train_loss"]


def test_same_photo_is_a_photo_ae_setting_that_fits_the_batch():
    assert TrainSettings(kind="photo-ae", same_photo=4, batch_size=32).same_photo == 4
    for bad in (dict(kind="ae", same_photo=1), dict(kind="photo-ae", same_photo=7, batch_size=32)):
        with pytest.raises(ValueError, match="same-photo"):
            TrainSettings(**bad)


def test_mirror_is_a_photo_ae_setting_that_reaches_the_model():
    assert model_config(TrainSettings(kind="photo-ae", mirror=True))["mirror"] is True
    assert "mirror" not in model_config(TrainSettings(kind="photo-ae"))
    with pytest.raises(ValueError, match="--mirror"):
        TrainSettings(kind="ae", mirror=True)


def test_contrast_is_a_photo_ae_setting():
    assert TrainSettings(kind="photo-ae", contrast=0.5).contrast == 0.5
    with pytest.raises(ValueError, match="--contrast"):
        TrainSettings(kind="ae", contrast=0.5)
    with pytest.raises(ValueError, match="--contrast"):
        TrainSettings(kind="photo-ae", contrast=-1)


def test_l1_loss_is_what_the_denoiser_trains_and_validates_on():
    import torch

    from models.registry import create_model
    from models.train import compute_loss

    with pytest.raises(ValueError, match="loss"):
        TrainSettings(kind="ae", loss="l1")
    with pytest.raises(ValueError, match="loss"):
        TrainSettings(kind="denoise", loss="huber")
    m = create_model("denoise", "tiny").eval()
    x, y = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        out = m(x)
        assert float(compute_loss(m, "denoise", x, y, loss="l1")) == pytest.approx(float((out - y).abs().mean()))
        assert float(compute_loss(m, "denoise", x, y)) == pytest.approx(float(((out - y) ** 2).mean()))


def test_unet_denoiser_trains_from_the_cli_settings(photo_dir, tmp_path):
    s = TrainSettings(kind="denoise", data=str(photo_dir), size="unet", loss="l1", epochs=1, steps_per_epoch=2,
                      batch_size=2, patch_size=20, val_fraction=0.3)
    with pytest.warns(UserWarning, match="broken.jpg"):
        r = train_model(s, tmp_path / "w", progress=False)
    from models.checkpoint import load_checkpoint

    ck = load_checkpoint(r.checkpoint)
    assert ck["config"]["arch"] == "unet" and ck["settings"]["loss"] == "l1"
    assert math.isfinite(r.history[0]["val_loss"])
