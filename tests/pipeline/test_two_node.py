"""A real two-node Ray cluster (two `ray start` processes on 127.0.0.1): a job with --address uses both nodes."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pipeline_models import photo, save
from test_process import _torchless_env

from pipeline.manifest import load_state

RAY = str(Path(sys.executable).with_name("ray"))


def _port_block(n: int) -> int:
    """A base port such that base..base+n-1 are all free on 127.0.0.1.

    Taken below the ephemeral range (where outgoing connections could grab a port between this check and
    Ray binding it) and above Ray's default worker ports (10002-19999) used by other local clusters.
    """
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 30000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports")


def _node_args(base: int) -> list[str]:
    """Every port a node binds, from base: six named ports, then 40 worker ports from base + 10."""
    names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
    args = [x for i, name in enumerate(names) for x in (name, str(base + i))]
    return args + ["--min-worker-port", str(base + 10), "--max-worker-port", str(base + 50)]


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line mentions our private temp dir: the ones this test's cluster started."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def two_node_cluster(tmp_path):
    """Head + one worker node, 1 CPU each, private temp dir and free ports; torn down by pid, never `ray stop`."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = _torchless_env(tmp_path)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")  # same mode for head, worker and driver
    base = _port_block(200)
    gcs = base
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--block", "--disable-usage-stats"]
    procs = []
    node_log = open(tmp_path / "worker-node.log", "w")
    try:
        # each node gets its own temp dir (sockets, logs) and its own ports, as if on separate machines
        procs.append(subprocess.Popen(
            [RAY, "start", "--head", "--port", str(gcs), "--include-dashboard", "false", "--temp-dir", f"{temp}/h",
             *_node_args(base + 1), *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.time() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", gcs), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "the head node did not come up"
                time.sleep(0.5)
        procs.append(subprocess.Popen(
            [RAY, "start", "--address", f"127.0.0.1:{gcs}", "--temp-dir", f"{temp}/w", *_node_args(base + 100),
             *common], env=env, stdout=node_log, stderr=subprocess.STDOUT,
            start_new_session=True))
        address = f"127.0.0.1:{gcs}"
        wait = ("import ray, time; ray.init(address=%r, log_to_driver=False); t = time.time()\n"
                "while len([n for n in ray.nodes() if n['Alive']]) < 2 and time.time() - t < 180: time.sleep(0.5)\n"
                "print(len([n for n in ray.nodes() if n['Alive']]))" % address)
        r = subprocess.run([sys.executable, "-c", wait], env=env, capture_output=True, text=True, timeout=300)
        log = (tmp_path / "worker-node.log").read_text()[-3000:]
        assert r.stdout.strip().endswith("2"), f"the worker node did not join: {log}"
        yield address, env
    finally:
        # A throwaway cluster: stop it hard, by the pids it started (never `ray stop`: other sessions' Ray)
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        node_log.close()
        for _ in range(3):
            for pid in _pids_using(temp):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        for _ in range(5):  # a dying process may still write a log line
            shutil.rmtree(temp, ignore_errors=True)
            if not os.path.exists(temp):
                break
            time.sleep(0.5)


def test_job_on_two_nodes(two_node_cluster, store, tmp_path):
    address, env = two_node_cluster
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(24):
        save(src / f"{i:02d}.jpg", photo(32, 32, i), quality=90)
    (src / "bad.jpg").write_bytes(b"nope")
    r = subprocess.run([sys.executable, "-m", "aeflow.cli", "denoise", str(src), str(out), "--address", address,
                        "--store", str(store), "--workers", "2", "--batch-size", "2", "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr[-3000:]
    s = json.loads((out / "_aeflow" / "summary.json").read_text())
    assert s["counts"]["ok"] == 24 and s["counts"]["failed"] == 1
    assert len(s["worker_nodes"]) == 2 and s["ray_address"].endswith(address.split(":")[1])
    assert len(s["nodes"]) == 2 and all(n > 0 for n in s["nodes"].values()), s["nodes"]
    assert {r["node"] for r in load_state(out).values() if r["status"] == "ok"} == set(s["nodes"])
