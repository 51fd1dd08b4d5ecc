"""flows/report.py: the markdown the flows publish (no Prefect needed)."""
from __future__ import annotations

from aeflow.store import ModelRef
from flows.report import job_counts, job_markdown, promotion_markdown
from models.promotion import decide_promotion


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
