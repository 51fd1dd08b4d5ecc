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


def _fake_actors(ray, tmp_path, kinds: list[str]):
    """Actors with the RayWorker interface: 'fast' starts at once, 'gated' starts once the gate file exists
    (the test's on_rows creates it when the first rows arrive), 'broken' raises in its constructor."""
    gate = tmp_path / "gate"

    class Fake:
        def __init__(self, kind: str, gate: str):
            import time
            from pathlib import Path

            if kind == "broken":
                raise RuntimeError("this worker cannot start")
            deadline = time.monotonic() + 30  # a pump that waited for every worker would get here
            while kind == "gated" and not Path(gate).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            self.kind, self.gate_seen = kind, Path(gate).exists()

        def describe(self) -> dict:
            return {"node": self.kind, "gate_seen": self.gate_seen, "providers": ["CPUExecutionProvider"],
                    "device": "cpu"}

        def process(self, tasks: list[str]) -> list[dict]:
            return [{"path": t, "status": "ok", "by": self.kind} for t in tasks]

    cls = ray.remote(num_cpus=0, max_restarts=0)(Fake)
    return [cls.remote(k, str(gate)) for k in kinds], gate


def _dispatch(ray_runner, actors, batches, on_rows):
    """What run_ray does once its actors are created: wait for the first answer, then pump."""
    from pipeline.worker import WorkerSpec

    spec = WorkerSpec(job="denoise", model_path="-", model_name="m", model_version=1, model_sha256="-", out_dir="-")
    starting = {a.describe.remote(): i for i, a in enumerate(actors)}
    infos = ray_runner._first_ready(starting, len(actors), {"num_cpus": 0}, {})
    ray_runner._pump(actors, iter(batches), on_rows, spec, starting, infos)
    return infos


def test_work_starts_on_the_first_worker_up_and_a_late_one_gets_its_share(ray_session, tmp_path):
    from pipeline import ray_runner

    actors, gate = _fake_actors(ray_session, tmp_path, ["gated", "fast"])
    batches = [[f"{b}-{i}" for i in range(2)] for b in range(12)]
    rows: list[dict] = []

    def on_rows(r):
        rows.extend(r)
        gate.touch()  # the gated worker can only come up after rows came back from the other one

    infos = _dispatch(ray_runner, actors, batches, on_rows)
    assert sorted(r["path"] for r in rows) == sorted(p for b in batches for p in b)  # each file once
    assert rows[0]["by"] == "fast"  # nobody waited for the late worker...
    assert sum(r["by"] == "gated" for r in rows) >= 2  # ...which still ran the batches queued for it
    assert sorted(i["node"] for _, i in infos) == ["fast", "gated"]
    assert [i["gate_seen"] for _, i in infos if i["node"] == "gated"] == [True]  # up only once rows came back


def test_batches_of_a_worker_that_fails_to_start_go_to_the_others(ray_session, tmp_path, caplog):
    from pipeline import ray_runner

    actors, _ = _fake_actors(ray_session, tmp_path, ["broken", "fast"])
    batches = [[f"{b}-{i}" for i in range(3)] for b in range(7)]
    rows: list[dict] = []
    infos = _dispatch(ray_runner, actors, batches, rows.extend)
    assert sorted(r["path"] for r in rows) == sorted(p for b in batches for p in b)
    assert {r["status"] for r in rows} == {"ok"} and {r["by"] for r in rows} == {"fast"}
    assert [i["node"] for _, i in infos] == ["fast"]
    assert "failed to start" in caplog.text


def test_no_worker_starting_raises_its_error(ray_session, tmp_path):
    import pytest

    from pipeline import ray_runner

    actors, _ = _fake_actors(ray_session, tmp_path, ["broken", "broken"])
    with pytest.raises(ray_session.exceptions.RayActorError, match="cannot start"):
        _dispatch(ray_runner, actors, [["a"]], lambda r: None)
