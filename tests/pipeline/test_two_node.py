"""A real two-node Ray cluster (two `ray start` processes on 127.0.0.1): a job with --address uses both nodes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pipeline_models import photo, save
from test_process import _torchless_env

from pipeline.manifest import load_state


@pytest.fixture
def two_node_cluster(tmp_path):
    """Head + one worker node, 1 CPU each, each its own temp dir and ports, as if on separate machines; workers
    that cannot import torch. The benchmarks' throwaway cluster: torn down by pid, never `ray stop`."""
    from bench._cluster import local_cluster

    with local_cluster(2, tmp_path, env=_torchless_env(tmp_path), own_temp_dirs=True) as (address, env):
        yield address, env


def test_job_on_two_nodes(two_node_cluster, store, tmp_path):
    address, env = two_node_cluster
    src, out = tmp_path / "in", tmp_path / "out"
    # enough work that the actor beside the driver cannot finish every block before the other one is up
    for i in range(160):
        save(src / f"{i:03d}.jpg", photo(128, 128, i), quality=90)
    (src / "bad.jpg").write_bytes(b"nope")
    r = subprocess.run([sys.executable, "-m", "aeflow.cli", "denoise", str(src), str(out), "--address", address,
                        "--store", str(store), "--model", "denoise-cnn", "--workers", "2", "--batch-size", "2",
                        "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr[-3000:]
    s = json.loads((out / "_aeflow" / "summary.json").read_text())
    assert s["counts"]["ok"] == 160 and s["counts"]["failed"] == 1
    assert len(s["worker_nodes"]) == 2 and s["ray_address"].endswith(address.split(":")[1])
    assert len(s["nodes"]) == 2 and all(n > 0 for n in s["nodes"].values()), s["nodes"]
    assert {r["node"] for r in load_state(out).values() if r["status"] == "ok"} == set(s["nodes"])
