"""The engine choice (made before the job starts, from facts) and the local engine's rows."""
from __future__ import annotations

import pytest

from pipeline.engines import LocalEngine, choose_engine
from pipeline.runner import JobConfig, run_job


@pytest.mark.parametrize("runner, address, workers, env, expected", [
    ("auto", None, None, None, "local"),
    ("auto", "local", None, None, "local"),
    ("auto", "10.0.0.1:6379", None, None, "ray"),
    ("auto", "auto", None, None, "ray"),
    ("auto", None, 3, None, "ray"),
    ("auto", None, None, "10.0.0.1:6379", "ray"),
    ("local", "10.0.0.1:6379", 3, "10.0.0.1:6379", "local"),
    ("ray", None, None, None, "ray"),
])
def test_engine_is_chosen_from_the_job_settings(monkeypatch, runner, address, workers, env, expected):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    assert choose_engine(runner, address, workers) == expected


def test_default_job_runs_in_process_without_importing_ray(store, images, tmp_path, monkeypatch):
    import sys

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError: the local engine never needs it
    s = run_job(JobConfig(job="upscale", in_dir=images, out_dir=tmp_path / "out", model="upscale-x2", store=store,
                          progress=False))
    assert s["engine"] == "local" and s["workers"] == 1 and s["worker_nodes"] == ["local"]
    assert s["counts"] == {"total": 7, "ok": 4, "failed": 3, "skipped": 0}


def test_local_engine_yields_one_row_per_task_in_batches(store, images, tmp_path):
    from aeflow.store import ModelStore
    from pipeline.reader import PlanSettings, Task, plan
    from pipeline.worker import WorkerSpec

    ref = ModelStore(store).resolve("denoise")
    out = tmp_path / "out"
    tasks = [t for t in plan(images, out, PlanSettings("denoise", "same", ref.sha256), {}) if isinstance(t, Task)]
    spec = WorkerSpec("denoise", str(ref.onnx_path()), ref.name, ref.version, ref.sha256, str(out.resolve()))
    engine = LocalEngine(spec)
    batches = [tasks[:2], tasks[2:]]
    got = list(engine.rows(iter(batches)))
    assert [len(b) for b in got] == [len(b) for b in batches]
    assert [r["path"] for b in got for r in b] == [t.rel for t in tasks]
    assert {r["node"] for b in got for r in b} == {"local"}
    facts = engine.facts()
    assert facts["workers"] == 1 and facts["providers"] == ["CPUExecutionProvider"]
