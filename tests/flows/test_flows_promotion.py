"""The promotion gate as a plain function, and the markdown the flows publish (no Prefect needed)."""
from __future__ import annotations

import math

import pytest

from aeflow.store import ModelRef
from flows.promotion import decide_promotion, main_metric
from flows.report import job_counts, job_markdown, promotion_markdown


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


def test_promotion_markdown_shows_decision_numbers_and_pictures(tmp_path):
    (tmp_path / "samples.png").write_bytes(b"png")
    ref = ModelRef("denoise", 3, tmp_path, {"metrics": {"psnr_25": 27.5, "ssim_25": 0.8},
                                            "pictures": ["samples.png"]})
    d = decide_promotion("denoise", {"psnr_25": 26.0}, {"psnr_25": 27.25})
    md = promotion_markdown(ref, d, 2, promoted=False)
    assert "denoise:3: NOT promoted" in md and "26" in md and "27.25" in md and "denoise:2" in md
    assert str(tmp_path / "samples.png") in md and "ssim_25" in md


def test_job_markdown_and_counts():
    summary = {"counts": {"total": 5, "ok": 3, "failed": 2, "skipped": 0}, "images_per_s": 12.5,
               "model": {"name": "denoise", "version": 1},
               "failures": [{"path": "empty.png", "error": "ImageDecodeError: empty file"}]}
    assert job_counts(summary) == {"ok": 3, "failed": 2, "skipped": 0}
    md = job_markdown("denoise", "denoise", "in", "out", summary)
    assert "| failed | 2 |" in md and "empty.png" in md and "denoise:1" in md and "12.5" in md
