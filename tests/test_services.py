"""Every docker-compose service's command, started as a local process on free 127.0.0.1 ports: start, wait
until healthy (bounded), assert, stop. The Prefect server is SQLite here instead of Postgres."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

BIN = Path(sys.executable).parent


@contextmanager
def _process(cmd: list[str], log: Path, env: dict | None = None, grace: float = 30):
    """A child in its own session; on exit the whole group gets SIGTERM, then SIGKILL (only ours)."""
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield p
        finally:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)
                    p.wait(wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue


def test_prefect_server_is_healthy_on_localhost(prefect_server):
    assert prefect_server.api_url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{prefect_server.api_url}/health", timeout=10).json() is True
    assert httpx.get(f"{prefect_server.api_url}/admin/version", timeout=10).json().startswith("3.")


def _node_ports() -> list[str]:
    # Two nodes on one host: every per-node port must differ, so each is picked free.
    ports = []
    for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"):
        ports += [flag, str(free_port())]
    return ports


@pytest.fixture
def short_tmp():
    """A short unique folder under /tmp: Ray's socket paths must stay under 107 bytes."""
    d = tempfile.mkdtemp(prefix="aeray-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_ray_head_and_a_worker_form_a_two_node_cluster(tmp_path, short_tmp):
    temp = short_tmp  # unique temp dir: never touches another Ray on this machine
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    port = free_port()
    head = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--num-cpus", "1", "--include-dashboard", "false", "--temp-dir", str(temp), "--disable-usage-stats",
            *_node_ports()]
    worker = [str(BIN / "ray"), "start", "--block", "--address", f"127.0.0.1:{port}", "--node-ip-address",
              "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", *_node_ports()]
    # One driver polls the cluster until both nodes are alive (bounded): cheaper than repeated `ray status`.
    count = ("import ray, time; ray.init(address='127.0.0.1:%d', log_to_driver=False, logging_level='ERROR')\n"
             "end = time.monotonic() + 90\n"
             "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.monotonic() < end: time.sleep(1)\n"
             "print('NODES', sum(n['Alive'] for n in ray.nodes()))" % port)
    t0 = time.monotonic()
    # `ray start --block` lingers ~30 s after SIGTERM; its whole process group is ours, so 5 s is enough grace.
    with _process(head, tmp_path / "head.log", env, grace=5) as h:
        deadline = time.monotonic() + 90
        while not (temp / "ray_current_cluster").exists() and time.monotonic() < deadline:
            assert h.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(0.5)
        with _process(worker, tmp_path / "worker.log", env, grace=5) as w:
            r = subprocess.run([sys.executable, "-c", count], env=env, capture_output=True, text=True, timeout=150)
            assert w.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            assert "NODES 2" in r.stdout, r.stdout + r.stderr[-2000:]
            print(f"two nodes after {time.monotonic() - t0:.1f} s")
    print(f"stopped after {time.monotonic() - t0:.1f} s")


def test_serve_registers_its_deployments(prefect_server, tmp_path):
    # the watched folder and the output are s3:// URLs, as in docker-compose.yml
    watched = "s3://photos/incoming"
    cmd = [sys.executable, "-m", "aeflow.cli", "serve", "--api-url", prefect_server.api_url,
           "--store", str(tmp_path / "store"), "--nightly-embed-dir", watched, "--embed-out",
           "s3://photos/embeddings", "--runner", "local"]
    want = {"embed/nightly-embed": "0 2 * * *", "train/weekly-retrain-denoise": "0 3 * * 0"}
    on_demand = ("train/on-demand", "denoise/on-demand", "upscale/on-demand", "embed/on-demand")
    api = prefect_server.api_url
    # as in docker-compose.yml: the runner's health endpoint is the container's healthcheck
    health_port = free_port()
    env = dict(prefect_server.env(), PREFECT_RUNNER_SERVER_ENABLE="true", PREFECT_RUNNER_SERVER_HOST="127.0.0.1",
               PREFECT_RUNNER_SERVER_PORT=str(health_port))
    with _process(cmd, tmp_path / "serve.log", env) as p:
        deadline, found = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            assert p.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json={}).json()}
            found = {f"{flows[d['flow_id']]}/{d['name']}": d
                     for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
            crons = {k: [s["schedule"].get("cron") for s in found[k]["schedules"]] for k in want if k in found}
            if all(crons.get(k) == [c] for k, c in want.items()) and all(k in found for k in on_demand):
                break
            time.sleep(2)
        deadline, healthy = time.monotonic() + 60, False
        while not healthy and time.monotonic() < deadline:
            try:
                healthy = httpx.get(f"http://127.0.0.1:{health_port}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                time.sleep(1)
        assert healthy, (tmp_path / "serve.log").read_text()[-3000:]
    for name, cron in want.items():
        assert [s["schedule"].get("cron") for s in found[name]["schedules"]] == [cron]
    assert found["embed/nightly-embed"]["parameters"]["in_dir"] == watched
    assert found["train/weekly-retrain-denoise"]["parameters"]["promote"] is True
    for name in (*on_demand, *want):
        d = found[name]
        limit = d.get("concurrency_limit") or (d.get("global_concurrency_limit") or {}).get("limit")
        assert limit == 1, (name, d)


def test_api_answers_health_models_and_a_denoise_request(tmp_path):
    """The aeflow-api service's command (`aeflow api`), over a store of tiny torch-free models."""
    import io

    import numpy as np
    from PIL import Image

    from tests.serving.helpers import pipeline_models

    models = pipeline_models()
    store = models.build_store(tmp_path / "store")
    port = free_port()
    cmd = [str(BIN / "aeflow"), "api", "--host", "127.0.0.1", "--port", str(port), "--store", str(store),
           "--denoise-model", "denoise", "--device", "cpu", "--replica-cpus", "0.1"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS="")
    log = tmp_path / "api.log"
    url = f"http://127.0.0.1:{port}"
    with _process(cmd, log, env) as p:
        deadline, healthy = time.monotonic() + 180, False
        while not healthy and time.monotonic() < deadline:
            assert p.poll() is None, log.read_text()[-3000:]
            try:
                healthy = httpx.get(f"{url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                time.sleep(1)
        assert healthy, log.read_text()[-3000:]
        assert "denoise" in httpx.get(f"{url}/models", timeout=10).text
        buf = io.BytesIO()
        Image.fromarray(models.photo(24, 32, seed=3)).save(buf, format="PNG")
        r = httpx.post(f"{url}/denoise", content=buf.getvalue(), timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["x-aeflow-model"].startswith("denoise:")
        assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (24, 32, 3)


def test_the_bucket_service_creates_its_bucket_once(s3):
    """docker-compose's minio-buckets command, against the tests' S3 server standing in for MinIO."""
    cmd = [sys.executable, "-m", "aeflow.cli", "buckets", "photos-compose-check"]
    first = subprocess.run(cmd, env=s3.env(), capture_output=True, text=True, timeout=60)
    again = subprocess.run(cmd, env=s3.env(), capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "created" in first.stdout, first.stderr
    assert again.returncode == 0 and "exists" in again.stdout
    assert any(b["Name"] == "photos-compose-check" for b in s3.client.list_buckets()["Buckets"])
