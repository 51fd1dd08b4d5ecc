"""bench/retrieval.py's scores on a made-up similarity matrix, and its copy set built from generated photos."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.retrieval import EDITS, build_set, scores
from tests.conftest import make_photo


def test_scores_recall_map_and_recall_at_90_precision():
    # 4 copies of 2 originals; copy 3 ranks its original second
    sim = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.5]], np.float32)
    copies = [("c0", 0, "jpeg"), ("c1", 0, "grey"), ("c2", 1, "jpeg"), ("c3", 1, "grey")]
    s = scores(sim, copies)
    assert s["recall_at_1"] == 0.75 and s["map"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert s["per_edit_recall_at_1"]["jpeg"] == 1.0 and s["per_edit_recall_at_1"]["grey"] == 0.5
    # pairs by score: .9 T, .8 T, .7 T, .6 F, .5 T: precision >= 0.9 holds for the first three only
    assert s["recall_at_p90"] == 0.75 and s["threshold_at_p90"] == pytest.approx(0.7)


def test_copy_set_has_one_copy_per_edit_of_each_distinct_original(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(make_photo(80, 96, seed=i)).save(photos / f"{i}.png")
    originals, copies = build_set(photos, tmp_path / "work")
    assert len(originals) == 2 * 5 and len(copies) == len(originals) * len(EDITS)  # whole photo + 4 quarters
    assert {e for _, _, e in copies} == set(EDITS)
    assert all((tmp_path / "work" / "set" / n).is_file() for n in originals + [c[0] for c in copies])
