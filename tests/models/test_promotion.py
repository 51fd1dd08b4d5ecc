"""models/promotion.py: the one promotion rule, and the gate that scores both checkpoints on the same data."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from models.promotion import decide_promotion, main_metric


def test_main_metric_comes_from_models_evaluate():
    from models.evaluate import MAIN_METRIC

    for kind, (key, higher) in MAIN_METRIC.items():
        assert main_metric(kind) == (key, higher)
    with pytest.raises(ValueError, match="no main metric"):
        main_metric("nope")


def test_no_production_yet_promotes():
    d = decide_promotion("denoise", {"psnr_25": 28.0}, None)
    assert d.promote and d.prod_value is None and d.new_value == 28.0 and d.metric == "psnr_25"


@pytest.mark.parametrize("new,prod,promote", [(28.5, 28.0, True), (28.0, 28.0, True), (27.9, 28.0, False)])
def test_higher_is_better(new, prod, promote):
    d = decide_promotion("denoise", {"psnr_25": new}, {"psnr_25": prod})
    assert d.promote is promote
    assert (d.new_value, d.prod_value) == (new, prod)
    assert ("worse" in d.reason) is (not promote)


@pytest.mark.parametrize("new,prod,promote", [(0.9, 1.0, True), (1.0, 1.0, True), (1.1, 1.0, False)])
def test_lower_is_better(new, prod, promote):
    d = decide_promotion("any", {"loss": new}, {"loss": prod}, metric=("loss", False))
    assert d.promote is promote and d.higher_is_better is False


@pytest.mark.parametrize("new_metrics", [{}, {"psnr_25": None}, {"psnr_25": math.nan}, {"psnr_25": "x"}])
def test_new_model_without_metric_is_refused(new_metrics):
    d = decide_promotion("denoise", new_metrics, {"psnr_25": 20.0})
    assert not d.promote and "no usable" in d.reason


def test_unscorable_production_is_kept():
    d = decide_promotion("upscale", {"psnr_gain": 0.5}, {})
    assert not d.promote and "keeping it" in d.reason and d.metric == "psnr_gain"


def test_gate_scores_both_checkpoints_on_the_new_data_and_ties_promote(tmp_path):
    from aeflow.store import ModelStore
    from models.promotion import gate

    src = tmp_path / "v"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"x")
    (src / "checkpoint.pt").write_bytes(b"x")
    store = ModelStore(tmp_path / "store")
    seen = []

    def evaluate(ckpt, data, seed, limit):
        seen.append((Path(ckpt).name, data))
        return {"psnr_25": 28.0}  # the same score: a tie

    d, version, new, prod = gate(store, "denoise", "denoise", "new.pt", "builtin:photos", {"psnr_25": 1.0},
                                 evaluate=evaluate)
    assert d.promote and version is None and new == {"psnr_25": 1.0} and seen == []  # no production: no scoring
    store.register("denoise", src, {"kind": "denoise"})
    store.set_alias("denoise", "production", 1)
    d, version, new, prod = gate(store, "denoise", "denoise", "new.pt", "builtin:photos", {"psnr_25": 1.0},
                                 evaluate=evaluate)
    assert d.promote and version == 1 and new == prod == {"psnr_25": 28.0}
    assert seen == [("new.pt", "builtin:photos"), ("checkpoint.pt", "builtin:photos")]
