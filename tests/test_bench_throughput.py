"""Smoke test of bench/throughput.py: a --quick run produces the report with every field (no timing thresholds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = {"list", "read", "decode", "infer", "encode", "write", "manifest", "other"}


def test_quick_run_writes_full_report(tmp_path):
    out = tmp_path / "report.json"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, str(REPO / "bench" / "throughput.py"), "--quick", "--jobs", "denoise,embed",
                        "--work", str(tmp_path / "work"), "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    rep = json.loads(out.read_text())

    assert rep["machine"]["nproc"] == os.cpu_count() and rep["date"] and rep["device"] in ("cpu", "cuda")
    assert [(x["job"], x["size"], x["n"]) for x in rep["results"]] == [("denoise", 32, 6), ("embed", 32, 6)]
    for row in rep["results"]:
        modes = row["modes"]
        assert set(modes) == {"naive", "floor", "aeflow-local", "aeflow"}
        for name, m in modes.items():
            assert m["images"] == 6, (name, m)
            assert m["images_per_s"] > 0 and m["wall_s"] > 0
            if name != "aeflow":
                assert set(m["stages_s"]) == STAGES and m["stages_s"]["infer"] > 0
        c = modes["aeflow"]
        assert c["command"].split()[1] == row["job"] and "--model" in c["command"]
        assert c["workers"] >= 1 and c["threads_per_worker"] >= 1 and c["process_wall_s"] >= c["wall_s"]
        assert c["manifest_seconds_sum"] > 0 and c["peak_rss_mib"] > 0
        # the default runner, with no cluster named and no --workers, keeps the job in-process
        assert c["engine"] == "local" and c["peak_processes"] >= 1
        for key in ("c_over_a", "c_over_b", "c_over_b_process", "local_over_b", "decode_only_images_per_s"):
            assert row[key] > 0, key

    mem = rep["memory"]
    assert mem["n"]["images"] == 4 and mem["10n"]["images"] == 40  # the 10N run lists 10x the files
    assert mem["rss_ratio"] > 0 and mem["anon_ratio"] > 0 and "/proc" in mem["how"]
    assert mem["n"]["engine"] == mem["10n"]["engine"] == "ray"  # one engine at both sizes
    assert {(x["job"], x["size"]) for x in rep["model_only"]} == {("denoise", 32), ("embed", 96)}
    assert all(x["ort_numpy"] > 0 and x["torch_fp32"] > 0 for x in rep["model_only"])

    # the markdown report on stdout has every table
    for title in ("(a) naive torch", "Where the time goes", "manifest ms/img", "10N/N peak RSS", "Model only"):
        assert title in r.stdout, title
    # generated inputs are cached, outputs of the runs are cleaned up
    work = tmp_path / "work"
    assert (work / "photos-32px-6" / ".complete").is_file()
    assert len(list((work / "photos-32px-4-x10").rglob("*.jpg"))) == 40
    assert not list(work.glob("run-*"))


def test_cuda_request_falls_back_with_a_message():
    from bench.throughput import resolve_device

    device, note = resolve_device("cuda")
    # on a GPU machine: cuda and no note; anywhere else: the CPU, and a note that says so
    assert (device == "cuda" and note is None) or (device == "cpu" and "runs on the CPU instead" in note)
    assert resolve_device("cpu") == ("cpu", None)


def test_tree_sampler_counts_descendants():
    from bench._proc import TreeSampler, tree

    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3)']); "
            "time.sleep(3); c.wait()")
    p = subprocess.Popen([sys.executable, "-c", code])
    try:
        s = TreeSampler(p.pid).start()
        deadline = time.time() + 10
        while len(tree(p.pid)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        mem = s.stop()
    finally:
        p.wait()
    assert mem.peak_processes == 2 and mem.peak_rss_mib > 1 and mem.samples >= 1


def test_shipped_models_give_the_cli_graph_and_matching_torch_weights(tmp_path):
    """--shipped: the floor gets the graph the CLI runs on CPU (int8 where shipped); torch gets the same weights."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from aeflow.store import ModelStore
    from bench._models import stored_models

    models = stored_models(["upscale", "embed"], tmp_path / "empty-store")
    up, emb = models["upscale"], models["embed"]
    assert up.precision == "int8" and up.onnx.name == "model.int8.onnx" and up.trained
    assert emb.precision == "fp32" and emb.onnx.name == "model.onnx" and emb.spec.startswith("photo-ae")
    assert (emb.input_size, emb.channels) == (96, 3)  # the default embed model: colour photos squashed to 96²
    x = np.random.default_rng(0).integers(0, 256, (1, 24, 24, 3), dtype=np.uint8)
    fp32 = ModelStore(tmp_path / "empty-store").resolve("upscale-x2").onnx_path()
    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.inference_mode():
        t = up.torch(torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255))
    got = t.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(got.astype(int) - ref).max() <= 1  # model_from_onnx rebuilt the shipped weights
