"""models/views.py: the edits a copied photo goes through, and the views the photo-ae trains on."""
from __future__ import annotations

import numpy as np
import pytest

from models.views import EDITS, apply_edit, edited, shrink, view_batch
from tests.conftest import make_photo


@pytest.mark.parametrize("name", EDITS)
def test_each_edit_changes_the_photo_and_keeps_it_rgb(name):
    img = make_photo(60, 80, seed=3)
    out = apply_edit(img, name, np.random.default_rng(0))
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
    assert out.shape != img.shape or not np.array_equal(out, img)


def test_views_are_square_and_reproducible():
    photos = [make_photo(120, 160, seed=i) for i in range(3)]
    a = view_batch(photos, 5, 32, np.random.default_rng(7))
    b = view_batch(photos, 5, 32, np.random.default_rng(7))
    for x, y in zip(a, b):
        assert x.shape == (5, 32, 32, 3) and np.array_equal(x, y)
    assert not np.array_equal(a[0], a[1])  # two different edits of each crop
    assert edited(photos[0], np.random.default_rng(1), 24).shape == (24, 24, 3)
    assert [p.shape for p in shrink([make_photo(400, 500), make_photo(50, 60)], 96)] == [(100, 125, 3), (50, 60, 3)]
    with pytest.raises(ValueError, match="unknown edit"):
        apply_edit(photos[0], "sepia", np.random.default_rng(0))


def test_training_and_inference_share_one_preprocessing_function(tmp_path):
    """The S×S input a photo-ae trains on is made by the very function the batch job runs before its graph."""
    import torch

    import aeflow.imageio
    import models.data
    import models.views
    import pipeline.inference
    from models.export import export_onnx
    from models.registry import create_model
    from pipeline.predictor import Predictor

    fit = aeflow.imageio.fit_square
    assert models.views.fit_square is fit and models.data.fit_square is fit and pipeline.inference.fit_square is fit
    torch.manual_seed(0)
    model = create_model("photo-ae", "tiny").eval()
    export_onnx(model, tmp_path / "model.onnx", name="p", version=1)
    img = make_photo(50, 90, seed=4)  # not square: squash and crop differ
    want = model.encode(torch.from_numpy(fit(img, 32, "squash")).permute(2, 0, 1)[None].float() / 255).detach()
    got = pipeline.inference.embed(Predictor(str(tmp_path / "model.onnx")), [img])[0]
    np.testing.assert_allclose(got, want[0].numpy(), atol=1e-5)


def test_same_photo_rows_are_distinct_regions_of_one_photo():
    """With same_photo=k the first 5k clean crops are the photo and its quarters, from k different photos."""
    photos = [np.full((120, 160, 3), 40 * i, np.uint8) for i in range(4)]  # one flat colour per photo
    for p in photos:  # a different colour per quarter, so each crop shows which region it came from
        p[:60, 80:] += 1
        p[60:, :80] += 2
        p[60:, 80:] += 3
    _, _, clean = view_batch(photos, 12, 16, np.random.default_rng(0), same_photo=2)
    for g in range(2):
        rows = clean[5 * g:5 * g + 5].astype(int)
        assert len({int(r.min()) // 40 for r in rows}) == 1  # one photo per group
        assert len({int(r.min()) % 40 for r in rows[1:]}) == 4  # four different quarters
        assert rows[0].max() - rows[0].min() >= 2  # the whole photo spans several quarters
    assert len({int(clean[5 * g].min()) // 40 for g in range(2)}) == 2  # two different photos
    with pytest.raises(ValueError, match="same_photo"):
        view_batch(photos, 9, 16, np.random.default_rng(0), same_photo=2)
