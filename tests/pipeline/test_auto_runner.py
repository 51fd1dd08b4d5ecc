"""The default engine: in-process for small jobs, Ray with the driver bridging the start-up for larger ones."""
from __future__ import annotations

import math
import threading
from collections import Counter

import pytest
from pipeline_models import photo, save

from pipeline import auto_runner
from pipeline.auto_runner import Bridge, local_budget_s, ray_speedup
from pipeline.manifest import iter_rows, load_state
from pipeline.runner import JobConfig, run_job
from pipeline.writer import OutputSpaceError


def test_local_budget_is_where_ray_would_break_even():
    assert local_budget_s(6.0, 1) == math.inf  # one core: Ray never pays off on this machine
    assert local_budget_s(6.0, 0.8) == math.inf  # actors slower than the in-process worker
    assert local_budget_s(6.0, 2) == pytest.approx(12.0)  # n·t = 6 + n·t/2
    assert local_budget_s(6.0, 16) == pytest.approx(6.4)
    assert local_budget_s(6.0, 1.05) == pytest.approx(126.0)  # inference-bound: Ray's gain is small


def test_ray_speedup_compares_one_thread_actors_with_the_all_cores_worker():
    assert ray_speedup(0.030, 0.060, 2) == pytest.approx(1.0)  # onnxruntime already used both cores
    assert ray_speedup(0.030, 0.030, 2) == pytest.approx(2.0)  # the in-process run was serial
    assert ray_speedup(0.010, 0.025, 2) == pytest.approx(0.8)  # threading helped more than processes would


def _folder(root, n):
    for i in range(n):
        save(root / f"{i:03d}.png", photo(12, 14, i))
    return root


def _job(in_dir, out, store, **kw):
    return run_job(JobConfig(job="denoise", in_dir=in_dir, out_dir=out, model="denoise", store=store,
                             runner="auto", batch_size=2, progress=False, **kw))


def test_small_job_stays_in_process(monkeypatch, store, tmp_path):
    # a start-up that nothing could beat: the job must never reach Ray
    monkeypatch.setattr(auto_runner, "RAY_START_S", 1e6)
    monkeypatch.setattr(auto_runner, "ACTORS_START_S", 1e6)
    monkeypatch.setattr("pipeline.ray_runner.run_ray", lambda *a, **k: pytest.fail("Ray was started"))
    src, out = _folder(tmp_path / "in", 7), tmp_path / "out"
    s = _job(src, out, store)
    assert s["runner_used"] == "local" and s["driver_rows"] == 7 and s["nodes"] == {"driver": 7}
    assert s["counts"] == {"total": 7, "ok": 7, "failed": 0, "skipped": 0}
    assert s["auto"]["local_budget_s"] > 0 and s["auto"]["first_batch_s_per_image"] > 0
    assert all((out / f"{i:03d}.png").is_file() for i in range(7))


def test_large_job_moves_to_ray_and_every_file_is_done_once(ray_session, monkeypatch, store, tmp_path):
    # no budget: after its first batch the driver starts Ray, bridging until the actors answer
    monkeypatch.setattr(auto_runner, "RAY_START_S", 0.0)
    monkeypatch.setattr(auto_runner, "ACTORS_START_S", 0.0)
    monkeypatch.setattr(auto_runner, "ray_speedup", lambda all_cores, one, cpus: 2.0)  # actors would help
    src, out = _folder(tmp_path / "in", 30), tmp_path / "out"
    s = _job(src, out, store)
    assert s["runner_used"] == "ray" and s["counts"]["ok"] == 30
    # the first two batches (all cores) and the next two (one thread, as an actor) are the driver's: they measure
    assert s["driver_rows"] >= 8 and s["auto"]["one_thread_s_per_image"] > 0
    assert s["auto"]["all_cores_s_per_image"] > 0
    assert s["auto"]["ray_speedup_estimate"] == 2.0
    assert s["nodes"].get("driver", 0) == s["driver_rows"] and sum(s["nodes"].values()) == 30
    assert "ray_startup_s" in s and s["workers"] >= 1
    paths = Counter(r["path"] for r in iter_rows(out))
    assert paths == Counter({f"{i:03d}.png": 1 for i in range(30)})  # none twice, none lost
    assert all((out / p).is_file() for p in paths)
    s2 = _job(src, out, store)  # resume: all skipped, on whichever engine
    assert s2["counts"] == {"total": 30, "ok": 0, "failed": 0, "skipped": 30}


def test_a_job_that_ray_would_not_speed_up_stays_in_process(monkeypatch, store, tmp_path):
    # Ray would start at once, but its one-thread actors measure no faster than the in-process worker
    monkeypatch.setattr(auto_runner, "RAY_START_S", 0.0)
    monkeypatch.setattr(auto_runner, "ACTORS_START_S", 0.0)
    seen = []

    def no_gain(all_cores, one, cpus):
        seen.append((all_cores, one, cpus))
        return 1.0
    monkeypatch.setattr(auto_runner, "ray_speedup", no_gain)
    monkeypatch.setattr("pipeline.ray_runner.run_ray", lambda *a, **k: pytest.fail("Ray was started"))
    src, out = _folder(tmp_path / "in", 9), tmp_path / "out"
    s = _job(src, out, store)
    assert s["runner_used"] == "local" and s["driver_rows"] == 9 and s["counts"]["ok"] == 9
    assert len(seen) == 1 and seen[0][0] > 0 and seen[0][1] > 0  # both rates were measured, once
    assert s["auto"]["local_budget_s"] is None and s["auto"]["ray_speedup_estimate"] == 1.0
    paths = Counter(r["path"] for r in iter_rows(out))
    assert paths == Counter({f"{i:03d}.png": 1 for i in range(9)})  # the probe batches too, exactly once


def test_a_folder_that_ends_while_measuring_stays_in_process(monkeypatch, store, tmp_path):
    monkeypatch.setattr(auto_runner, "RAY_START_S", 0.0)
    monkeypatch.setattr(auto_runner, "ACTORS_START_S", 0.0)
    monkeypatch.setattr(auto_runner, "ray_speedup", lambda *a: pytest.fail("no rate to compare"))
    monkeypatch.setattr("pipeline.ray_runner.run_ray", lambda *a, **k: pytest.fail("Ray was started"))
    src, out = _folder(tmp_path / "in", 5), tmp_path / "out"  # 3 batches of 2: the one-thread probe lacks one
    s = _job(src, out, store)
    assert s["runner_used"] == "local" and s["counts"]["ok"] == 5 and s["driver_rows"] == 5


def test_explicit_workers_mean_ray_without_a_bridge(ray_session, store, tmp_path):
    src, out = _folder(tmp_path / "in", 5), tmp_path / "out"
    s = _job(src, out, store, workers=1)
    assert s["runner_used"] == "ray" and s["driver_rows"] == 0 and "driver" not in s["nodes"]
    assert len(load_state(out)) == 5


class _FakeWorker:
    def __init__(self, fail_on=None):
        self.fail_on, self.seen, self.threads = fail_on, [], set()

    def process(self, batch):
        self.threads.add(threading.get_ident())
        if batch == self.fail_on:
            raise OutputSpaceError("disk full")
        self.seen.append(batch)
        return [{"path": t} for t in batch]


def test_bridge_shares_the_batches_with_the_pump():
    worker, delivered = _FakeWorker(), []
    bridge = Bridge(worker, delivered.extend)
    raw = iter([[i, i + 1000] for i in range(200)])
    bridge.start(raw)
    pumped = []
    for batch in bridge.locked(raw):  # the pump's side, on this thread, while the bridge runs
        pumped.append(batch)
        bridge.on_rows([{"path": t} for t in batch])
    bridge.finish()
    got = sorted(r["path"] for r in delivered)
    assert got == sorted(list(range(200)) + list(range(1000, 1200)))  # each batch exactly once
    assert len(worker.seen) + len(pumped) == 200 and bridge.rows == 2 * len(worker.seen)
    assert threading.get_ident() not in worker.threads  # the bridge worked on its own thread
    assert bridge.worker is None  # freed once finished


def test_bridge_error_reaches_the_main_thread():
    bridge = Bridge(_FakeWorker(fail_on=[1]), lambda rows: None)
    bridge.start(iter([[0], [1], [2]]))
    with pytest.raises(OutputSpaceError):
        bridge.finish()
