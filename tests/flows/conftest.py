"""Fixtures of the flow tests: one real `prefect server start` per session, and a test-sized demo run on it."""
from __future__ import annotations

import subprocess
import sys

import pytest


def shared_prefect_server(config, tmp_path_factory):
    """The session's one local Prefect server (started on first use, stopped when pytest ends)."""
    from flows.server import LocalPrefectServer

    srv = getattr(config, "_aeflow_prefect_server", None)
    if srv is None:
        srv = LocalPrefectServer(tmp_path_factory.mktemp("prefect-server")).start(timeout=180)
        config._aeflow_prefect_server = srv
        config.add_cleanup(srv.stop)
    return srv


@pytest.fixture(scope="session")
def prefect_server(request, tmp_path_factory):
    """A real Prefect server on a free 127.0.0.1 port (SQLite), shared by every test that needs schedules."""
    return shared_prefect_server(request.config, tmp_path_factory)


@pytest.fixture
def prefect_api(prefect_server):
    """Point this process's Prefect client at the session server for one test."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


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

