"""Tests for models/data.py: folders with awkward files, builtins, splits, patches and fresh degradations."""
from __future__ import annotations

import numpy as np
import pytest

from models.data import (
    HELDOUT_PHOTOS,
    RESERVED,
    TRAIN_PHOTOS,
    ArrayData,
    DataError,
    PatchData,
    add_noise,
    bicubic_down,
    dead_leaves,
    degrade,
    resolve_data,
    sample_patches,
    skimage_photo,
)


def test_folder_loads_mixed_images_and_skips_the_corrupt_one_with_one_warning(photo_dir):
    with pytest.warns(UserWarning, match="broken.jpg") as rec:
        ds = resolve_data(str(photo_dir), "denoise", val_fraction=0.3, seed=0)
    assert sum("unreadable" in str(w.message) for w in rec) == 1
    assert isinstance(ds, PatchData)
    names = ds.train_names + ds.val_names
    assert sorted(names) == ["a.jpg", "b.png", "sub/grey.png", "sub/palette.gif", "sub/rgba.png"]
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in ds.train + ds.val)
    # split by whole image, recorded by name
    assert not set(ds.train_names) & set(ds.val_names)
    assert ds.description["split"]["validation"] == ds.val_names and len(ds.val_names) == 2
    assert ds.description["num_images"] == 5 and len(ds.description["hash"]) == 64


def test_folder_as_fixed_size_arrays(photo_dir):
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = resolve_data(str(photo_dir), "ae", input_size=16, channels=3, val_fraction=0.2)
    assert isinstance(ds, ArrayData)
    assert ds.x_train.shape[1:] == (3, 16, 16) and ds.x_train.dtype == np.float32
    assert len(ds.x_train) + len(ds.x_val) == 5
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.y_train is None  # images not sorted into class folders: no labels


def test_class_subfolders_give_labels(tmp_path):
    from PIL import Image

    from tests.conftest import make_photo

    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(make_photo(20, 20, seed=i + (10 if cls == "dogs" else 0))).save(tmp_path / cls / f"{i}.png")
    ds = resolve_data(str(tmp_path), "conv-vae", input_size=12, channels=1, val_fraction=0.34)
    assert ds.x_train.shape[1:] == (1, 12, 12)
    assert sorted(np.concatenate([ds.y_train, ds.y_val]).tolist()) == [0, 0, 0, 1, 1, 1]


def test_bad_specs_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve_data(str(tmp_path / "nope"), "denoise")
    with pytest.raises(DataError, match="no readable images"):
        resolve_data(str(tmp_path), "denoise")
    with pytest.raises(DataError, match="unknown builtin"):
        resolve_data("builtin:cifar", "ae")
    with pytest.raises(DataError, match="digits, not photos"):
        resolve_data("builtin:mnist", "denoise")


def test_builtin_digits_are_28x28_with_labels_and_a_seeded_split():
    a = resolve_data("builtin:digits", "ae", input_size=28, channels=1, limit=100, seed=3)
    b = resolve_data("builtin:digits", "ae", input_size=28, channels=1, limit=100, seed=3)
    assert a.x_train.shape[1:] == (1, 28, 28) and len(a.x_train) + len(a.x_val) == 100
    assert len(a.x_val) == 10 and a.y_val is not None and a.y_val.dtype == np.int64
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert a.description["hash"] == b.description["hash"] and a.description["labels"] is True


def test_builtin_photos_never_load_reserved_images(monkeypatch):
    import matplotlib.cbook
    import skimage.data
    import sklearn.datasets

    def forbidden(*args, **kwargs):
        raise AssertionError("a reserved evaluation image was loaded")

    for name in ("chelsea", "cat", "coffee", "stereo_motorcycle"):
        monkeypatch.setattr(skimage.data, name, forbidden)
    monkeypatch.setattr(sklearn.datasets, "load_sample_images", forbidden)
    monkeypatch.setattr(sklearn.datasets, "load_sample_image", forbidden)
    monkeypatch.setattr(matplotlib.cbook, "get_sample_data", forbidden)
    ds = resolve_data("builtin:photos", "upscale", seed=0)
    names = set(ds.train_names + ds.val_names)
    assert names == {f"skimage:{n}" for n in TRAIN_PHOTOS}
    assert not names & {f"skimage:{n}" for n in HELDOUT_PHOTOS}  # the quality yardstick is never trained on
    assert not names & RESERVED
    assert all(im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8 for im in ds.train + ds.val)
    with pytest.raises(ValueError, match="reserved"):
        skimage_photo("chelsea")


def test_patches_are_augmented_crops_and_pad_small_images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:10, 0:12]
    img = np.stack([xx, yy, xx + yy], axis=2).astype(np.uint8)  # channel 0 = column, channel 1 = row
    p = sample_patches([img], 6, 16, rng)  # larger than the image: mirror-padded
    assert p.shape == (6, 16, 16, 3) and p.dtype == np.uint8
    q = sample_patches([img], 20, 4, np.random.default_rng(1), augment=False)
    # without augmentation each patch is a plain crop: columns step by 1 along x, rows along y
    assert all((np.diff(x[..., 0].astype(int), axis=1) == 1).all() for x in q)
    assert all((np.diff(x[..., 1].astype(int), axis=0) == 1).all() for x in q)
    # with augmentation some patches are turned or flipped
    r = sample_patches([img], 20, 4, np.random.default_rng(1))
    assert any(not (np.diff(x[..., 0].astype(int), axis=1) == 1).all() for x in r)


def test_fresh_noise_every_batch_from_the_same_patches():
    clean = np.full((4, 8, 8, 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    n1 = degrade("denoise", clean, rng, sigma_min=5, sigma_max=50)
    n2 = degrade("denoise", clean, rng, sigma_min=5, sigma_max=50)
    assert n1.dtype == np.uint8 and not np.array_equal(n1, n2)
    # per-sample sigma in [5, 50]: each sample's noise std lies in that range (with slack for 192 pixels)
    std = (n1.astype(float) - 128).reshape(4, -1).std(axis=1)
    assert (std > 3).all() and (std < 60).all()


def test_training_loop_draws_new_noise_for_every_batch_and_fixed_validation():
    from models.train import TrainSettings, _train_batches, _val_batches

    flat = [np.full((32, 32, 3), 100, np.uint8)]  # every patch of this image is the same clean patch
    ds = PatchData(train=flat, val=flat, train_names=["a"], val_names=["a"])
    s = TrainSettings(kind="denoise", batch_size=2, patch_size=8, steps_per_epoch=2)
    (x1, y1), (x2, y2) = list(_train_batches(s, ds, epoch=1, device="cpu"))
    assert bool((y1 == y2).all()) and not bool((x1 == x2).all())
    v1, v2 = _val_batches(s, ds, "cpu"), _val_batches(s, ds, "cpu")
    assert all(bool((a[0] == b[0]).all()) for a, b in zip(v1, v2))


def test_noise_is_quantised_and_clipped():
    clean = np.array([[[0, 255, 128]]], np.uint8)[None].repeat(50, axis=0)
    noisy = add_noise(clean, 50, 50, np.random.default_rng(0))
    assert noisy.dtype == np.uint8 and noisy.min() == 0 and noisy.max() == 255


def test_upscale_degradation_is_bicubic_downscale():
    hr = np.random.default_rng(0).integers(0, 256, (2, 16, 12, 3), dtype=np.uint8)
    lr = degrade("upscale", hr, np.random.default_rng(0), scale=4)
    assert lr.shape == (2, 4, 3, 3)
    np.testing.assert_array_equal(lr[1], bicubic_down(hr[1], 4))


def test_dead_leaves_are_deterministic_photo_like_images():
    palette = np.array([[10, 20, 30], [200, 100, 50], [90, 90, 90]], np.uint8)
    a = dead_leaves(64, np.random.default_rng(3), palette)
    b = dead_leaves(64, np.random.default_rng(3), palette)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, dead_leaves(64, np.random.default_rng(4), palette))
    assert a.std() > 10  # many occluding disks, not one flat colour


def test_synthetic_images_join_the_training_split_only():
    ds = resolve_data("builtin:photos", "denoise", seed=0, synthetic=3)
    plain = resolve_data("builtin:photos", "denoise", seed=0)
    assert ds.val_names == plain.val_names and len(ds.train) == len(plain.train) + 3
    assert ds.train_names[-3:] == [f"synthetic:dead-leaves-{i}" for i in range(3)]
    assert ds.description["synthetic"]["count"] == 3
    with pytest.raises(DataError, match="synthetic"):
        resolve_data("builtin:mnist", "ae", synthetic=2)
