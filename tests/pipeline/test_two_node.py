"""A real two-node Ray cluster (two `ray start` processes on 127.0.0.1): a job with --address uses both nodes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pipeline_models import photo, save
from test_process import _torchless_env

from pipeline.manifest import load_state


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory, s3_server):
    """Head + one worker node, 1 CPU each, each its own temp dir and ports, as if on separate machines; workers
    that cannot import torch, and the AWS settings each node of an S3-backed cluster has (its own credentials
    for the session's S3 server). The benchmarks' throwaway cluster: torn down by pid, never `ray stop`."""
    from bench._cluster import local_cluster
    from tests.conftest import S3_KEY_ID, S3_SECRET

    tmp = tmp_path_factory.mktemp("two-nodes")
    env = {**_torchless_env(tmp), "AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server.endpoint}
    with local_cluster(2, tmp, env=env, own_temp_dirs=True) as (address, env):
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


def test_job_on_two_nodes_reads_and_writes_s3(two_node_cluster, s3, store, tmp_path):
    """No folder is shared: inputs, outputs, manifest and the plan live in S3, the model travels with the actors."""
    address, env = two_node_cluster
    src = tmp_path / "in"
    for i in range(120):
        save(src / f"{i:03d}.jpg", photo(96, 96, i), quality=90)
    (src / "bad.jpg").write_bytes(b"nope")
    s3.upload(src, f"s3://{s3.inp}/p")
    out = f"s3://{s3.out}/o"
    elsewhere = tmp_path / "driver-cwd"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-m", "aeflow.cli", "denoise", f"s3://{s3.inp}/p", out, "--address", address,
                        "--store", str(store), "--model", "denoise-cnn", "--workers", "2", "--batch-size", "2",
                        "--no-progress"],
                       env=env, cwd=elsewhere,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr[-3000:]
    s = json.loads(s3.get(f"{out}/_aeflow/summary.json"))
    assert s["counts"]["ok"] == 120 and s["counts"]["failed"] == 1
    assert len(s["worker_nodes"]) == 2 and len(s["nodes"]) == 2, s["nodes"]
    keys = s3.keys(out)
    assert sum(1 for k in keys if k.endswith(".jpg")) == 120
    assert not any(k.startswith("_aeflow/plan/") for k in keys)  # the plan was in S3 and is removed
    assert list(elsewhere.iterdir()) == []  # nothing was written beside the driver


def test_a_node_without_the_store_gets_the_model_from_the_driver(tmp_path):
    import hashlib

    from pipeline.engine_ray import local_model
    from pipeline.worker import WorkerSpec

    graph = b"an onnx graph's bytes"
    sha = hashlib.sha256(graph).hexdigest()
    spec = WorkerSpec(job="denoise", model_path=str(tmp_path / "not-on-this-node.onnx"), model_name="m",
                      model_version=1, model_sha256=sha, out_dir="s3://b/o")
    copy = local_model(spec, graph)
    assert copy.model_path != spec.model_path and open(copy.model_path, "rb").read() == graph
    here = tmp_path / "here.onnx"
    here.write_bytes(graph)
    spec.model_path = str(here)
    assert local_model(spec, None).model_path == str(here)  # the driver's own file, when this node sees it
