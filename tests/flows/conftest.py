"""Fixtures of the flow tests: artifacts read over REST, and a test-sized demo run on the session's Prefect server."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture
def flow_run_artifacts(prefect_server):
    """A function: flow run id -> that run's artifacts (dicts), read from the server's REST API."""
    import httpx

    def read(flow_run_id) -> list[dict]:
        body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "limit": 200}
        r = httpx.post(f"{prefect_server.api_url}/artifacts/filter", json=body, timeout=30)
        r.raise_for_status()
        return r.json()

    return read


@pytest.fixture(scope="session")
def demo_run(prefect_server, tmp_path_factory):
    """`aeflow demo --mode test` run once, as a user would, against the session server (local runner: the Ray
    runner has its own tests in tests/pipeline and the cluster in tests/test_services.py)."""
    work = tmp_path_factory.mktemp("demo")
    env = prefect_server.env()
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    proc = subprocess.run([sys.executable, "-m", "aeflow.cli", "demo", "--workdir", str(work), "--mode", "test",
                           "--runner", "local"], cwd=work, env=env, capture_output=True, text=True, timeout=420)
    return work, proc

