"""The Ray engine on the session's shared local Ray: same rows as the local engine, bad files isolated."""
from __future__ import annotations

import pyarrow.parquet as pq
from pipeline_models import photo, save

from pipeline.manifest import iter_rows, load_state
from pipeline.runner import JobConfig, run_job


def test_ray_denoise_isolates_bad_files(ray_session, store, images, tmp_path):
    for i in range(6):  # a few more, so several batches are in flight on two actors
        save(images / "more" / f"{i}.png", photo(12, 12 + i, i))
    out = tmp_path / "out"
    cfg = JobConfig(job="denoise", in_dir=images, out_dir=out, model="denoise", store=store, runner="ray",
                    batch_size=2, workers=2, progress=False)
    s = run_job(cfg)
    assert s["counts"] == {"total": 13, "ok": 10, "failed": 3, "skipped": 0} and s["exit_code"] == 3
    assert s["workers"] == 2 and s["providers"] == ["CPUExecutionProvider"]
    assert sum(s["nodes"].values()) == 10 and "local" not in s["nodes"]
    state = load_state(out)
    assert all((out / p).is_file() for p, r in state.items() if r["status"] == "ok")
    assert {p for p, r in state.items() if r["status"] == "failed"} == {"broken.jpg", "empty.png", "notes.png"}
    assert not list(out.rglob("*.tmp"))
    s2 = run_job(cfg)  # rerun: failed ones retried (and fail again), the rest skipped
    assert s2["counts"] == {"total": 13, "ok": 0, "failed": 3, "skipped": 10}


def test_ray_embed(ray_session, store, images, tmp_path):
    out = tmp_path / "out"
    s = run_job(JobConfig(job="embed", in_dir=images, out_dir=out, model="ae", store=store, runner="ray",
                          batch_size=3, workers=1, progress=False))
    assert s["counts"]["ok"] == 4
    t = pq.read_table(sorted((out / "embeddings").glob("part-*.parquet")))
    assert sorted(t.column("path").to_pylist()) == ["a.jpg", "b.png", "sub/c.png", "sub/deep/d.webp"]
    parts = {r["part"] for r in iter_rows(out) if r["status"] == "ok"}
    assert parts == {p.name for p in (out / "embeddings").glob("part-*.parquet")}
