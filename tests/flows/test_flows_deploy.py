"""Served deployments on a real Prefect server: a schedule produces a completed run by itself, runs of one
deployment never overlap, and a run triggered through the API finishes with its artifacts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import httpx
import pytest


def _runs(api: str, deployment_id: str) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 200}
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30).json()


def _deployments(api: str) -> dict[str, dict]:
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}, timeout=30).json()}
    deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in deps}


@pytest.fixture
def served(demo_run, prefect_server, tmp_path):
    """`aeflow serve` with a 5-second embed schedule over the demo's clean samples, stopped after the test."""
    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = open(tmp_path / "serve.log", "w")
    cmd = [sys.executable, "-m", "aeflow.cli", "serve", "--api-url", prefect_server.api_url,
           "--store", str(work / "store"), "--nightly-embed-dir", str(work / "samples" / "clean"),
           "--embed-out", str(tmp_path / "nightly"), "--embed-interval", "5", "--retrain-kind", "none",
           "--runner", "local"]
    p = subprocess.Popen(cmd, env=prefect_server.env(), stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        yield work, tmp_path, p
    finally:
        os.killpg(p.pid, signal.SIGTERM)  # its own session: the served runs' processes go with it
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        log.close()


def test_schedule_runs_by_itself_and_api_runs_finish_with_artifacts(served, prefect_api, flow_run_artifacts):
    from prefect.deployments import run_deployment

    work, tmp_path, proc = served
    api = prefect_api.api_url
    deadline, deps = time.monotonic() + 90, {}
    while "embed/nightly-embed" not in deps and time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        time.sleep(1)
        deps = _deployments(api)
    nightly = deps["embed/nightly-embed"]
    assert nightly["concurrency_limit"] == 1 or (nightly.get("global_concurrency_limit") or {}).get("limit") == 1

    # 1. the interval schedule produces a COMPLETED run with nobody asking
    deadline, done = time.monotonic() + 180, []
    while not done and time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        time.sleep(2)
        done = [r for r in _runs(api, nightly["id"]) if r["state_type"] == "COMPLETED"]
    assert done, (tmp_path / "serve.log").read_text()[-3000:]
    assert done[0]["auto_scheduled"] is True
    assert (tmp_path / "nightly" / "index").is_dir()

    # 2. a run triggered through the API finishes, with its summary artifact
    out = tmp_path / "denoised"
    run = run_deployment("denoise/on-demand", parameters={"in_dir": str(work / "samples" / "noisy"),
                                                         "out_dir": str(out), "model": "denoise:production"},
                         timeout=240, poll_interval=2)
    assert run.state.is_completed(), run.state
    arts = flow_run_artifacts(run.id)
    md = "\n".join(a["data"] for a in arts if a["type"] == "markdown")
    assert "| ok | 6 |" in md and "| failed | 3 |" in md and "empty.png" in md
    assert len(list(out.rglob("*.png"))) == 6

    # 3. runs of one deployment never overlap (deployment concurrency limit 1)
    spans = sorted((datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"]))
                   for r in _runs(api, nightly["id"]) if r["start_time"] and r["end_time"])
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
