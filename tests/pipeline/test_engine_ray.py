"""The Ray Data engine on the session's shared local Ray: the local engine's rows and bytes, bad files isolated,
in both stage layouts (fused: CPU actors run every stage; split: decode and write tasks around GPU actors)."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from pipeline_models import photo, save

from pipeline.manifest import iter_rows, load_state
from pipeline.runner import JobConfig, run_job


@pytest.fixture(params=["fused", "split"])
def layout(request, monkeypatch):
    """Both layouts run here on CPU: the split one is what --device cuda uses."""
    import pipeline.engine_ray as engine_ray

    monkeypatch.setattr(engine_ray, "layout", lambda device: request.param)
    return request.param


def test_ray_denoise_isolates_bad_files(ray_session, store, images, tmp_path, layout):
    for i in range(6):  # a few more, so several batches are in flight on two actors
        save(images / "more" / f"{i}.png", photo(12, 12 + i, i))
    out = tmp_path / "out"
    cfg = JobConfig(job="denoise", in_dir=images, out_dir=out, model="denoise", store=store, runner="ray",
                    batch_size=2, workers=2, progress=False)
    s = run_job(cfg)
    assert s["layout"] == layout
    assert s["counts"] == {"total": 13, "ok": 10, "failed": 3, "skipped": 0} and s["exit_code"] == 3
    assert s["workers"] == 2 and s["providers"] == ["CPUExecutionProvider"]
    assert sum(s["nodes"].values()) == 10 and "local" not in s["nodes"]
    state = load_state(out)
    assert all((out / p).is_file() for p, r in state.items() if r["status"] == "ok")
    assert {p for p, r in state.items() if r["status"] == "failed"} == {"broken.jpg", "empty.png", "notes.png"}
    assert not list(out.rglob("*.tmp"))
    s2 = run_job(cfg)  # rerun: failed ones retried (and fail again), the rest skipped
    assert s2["counts"] == {"total": 13, "ok": 0, "failed": 3, "skipped": 10}


def test_ray_embed(ray_session, store, images, tmp_path, layout):
    out = tmp_path / "out"
    s = run_job(JobConfig(job="embed", in_dir=images, out_dir=out, model="ae", store=store, runner="ray",
                          batch_size=3, workers=1, progress=False))
    assert s["counts"]["ok"] == 4
    t = pq.read_table(sorted((out / "embeddings").glob("part-*.parquet")))
    assert sorted(t.column("path").to_pylist()) == ["a.jpg", "b.png", "sub/c.png", "sub/deep/d.webp"]
    parts = {r["part"] for r in iter_rows(out) if r["status"] == "ok"}
    assert parts == {p.name for p in (out / "embeddings").glob("part-*.parquet")}


def test_ray_rows_and_outputs_match_the_local_engine(ray_session, store, images, tmp_path, layout):
    runs = {}
    for runner in ("local", "ray"):
        out = tmp_path / runner
        s = run_job(JobConfig(job="denoise", in_dir=images, out_dir=out, model="denoise", store=store, runner=runner,
                              batch_size=3, workers=2, progress=False))
        assert s["engine"] == runner
        runs[runner] = (out, load_state(out))
    (lo, local), (ro, ray_) = runs["local"], runs["ray"]
    assert set(local) == set(ray_)
    same = ("status", "output", "in_w", "in_h", "out_w", "out_h", "in_bytes", "out_bytes", "mtime_ns", "error")
    for path, row in local.items():
        assert {k: row[k] for k in same} == {k: ray_[path][k] for k in same}, path
        if row["status"] == "ok":
            assert (lo / row["output"]).read_bytes() == (ro / row["output"]).read_bytes()
    assert not (ro / "_aeflow" / "plan").exists()  # the plan parts go with the job


def test_ray_s3_to_s3_in_both_layouts(ray_session, store, images, s3, layout):
    """The plan in S3, read tasks, actors and (split) decode/write tasks all reach the store from their workers."""
    s3.upload(images, f"s3://{s3.inp}/p")
    out = f"s3://{s3.out}/o"
    s = run_job(JobConfig(job="denoise", in_dir=f"s3://{s3.inp}/p", out_dir=out, model="denoise", store=store,
                          runner="ray", batch_size=2, workers=2, progress=False))
    assert s["layout"] == layout and s["counts"]["ok"] == 4 and s["counts"]["failed"] == 3
    keys = s3.keys(out)
    assert {"a.jpg", "b.png", "sub/c.png", "sub/deep/d.webp"} <= set(keys)
    assert not any(k.startswith("_aeflow/plan/") for k in keys)


def test_plan_parts_hold_a_bounded_number_of_tasks(tmp_path, monkeypatch):
    import pipeline.engine_ray as engine_ray
    from pipeline.reader import Task

    monkeypatch.setattr(engine_ray, "PLAN_ROWS_PER_PART", 10)
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "part-999999.parquet").write_bytes(b"left by a killed run")
    tasks = [Task(f"/in/{i}.png", f"{i}.png", None if i % 2 else f"{i}.png", i, 7 * i) for i in range(25)]
    batches = (tasks[i:i + 4] for i in range(0, 25, 4))
    written = engine_ray.write_plan(batches, tmp_path / "plan")
    parts = sorted((tmp_path / "plan").glob("*.parquet"))
    assert written == [(str(p), n) for p, n in zip(parts, [12, 12, 1])]  # a part as soon as it holds >= 10
    assert [pq.read_metadata(p).num_rows for p in parts] == [12, 12, 1]
    back = engine_ray._tasks(pq.read_table(parts).to_pydict())
    assert back == tasks


def test_blocks_grow_with_the_job_but_every_actor_keeps_work():
    from pipeline.engine_ray import BLOCKS_PER_ACTOR, MAX_BATCHES_PER_BLOCK, batches_per_block

    assert batches_per_block(13, 2, 2) == 1  # a small job: one batch per block, spread over both actors
    assert batches_per_block(400, 8, 1) == MAX_BATCHES_PER_BLOCK
    for tasks, size, actors in ((400, 8, 2), (1000, 8, 16), (10**6, 64, 100), (50, 8, 4)):
        k = batches_per_block(tasks, size, actors)
        assert 1 <= k <= MAX_BATCHES_PER_BLOCK
        assert k == 1 or tasks // (k * size) >= actors * BLOCKS_PER_ACTOR


def test_workers_that_never_start_end_the_job_with_a_clear_error(ray_session, store, images, tmp_path, monkeypatch):
    import pipeline.engine_ray as engine_ray
    from pipeline.predictor import JobConfigError

    # a resource no node has: the actors stay pending, as when their node never comes up
    monkeypatch.setattr(engine_ray, "START_TIMEOUT_S", 3)
    monkeypatch.setattr(engine_ray, "_actor_options", lambda: {"max_restarts": 0, "resources": {"no-such-node": 1}})
    cfg = JobConfig(job="denoise", in_dir=images, out_dir=tmp_path / "out", model="denoise", store=store,
                    runner="ray", batch_size=2, workers=2, progress=False)
    with pytest.raises(JobConfigError, match="could not start the job's 2 worker"):
        run_job(cfg)
    assert not list((tmp_path / "out").rglob("*.png"))  # nothing was written
