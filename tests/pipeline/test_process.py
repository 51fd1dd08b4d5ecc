"""The CLI as a separate process: killed midway then rerun (nothing lost or duplicated), and never importing torch."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline_models import photo, save

from pipeline.manifest import iter_rows

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 120


def _torchless_env(tmp_path: Path) -> dict:
    """Environment whose Python processes (Ray workers included) cannot import torch."""
    block = tmp_path / "block_torch"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # import torch -> ImportError\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(block), str(REPO)])
    env.pop("RAY_ADDRESS", None)
    return env


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "aeflow.cli", *args]


def test_pipeline_modules_do_not_import_torch(tmp_path):
    code = ("import sys; import pipeline.runner, pipeline.engines, pipeline.engine_ray, pipeline.worker, "
            "aeflow.cli.jobs; assert 'torch' not in sys.modules; print('ok')")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # torch importable: it must simply not be imported
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_killed_driver_resumes_without_loss_or_duplicates(store, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(N_IMAGES):
        save(src / f"d{i % 3}" / f"{i:03d}.png", photo(64, 64, i))
    env = _torchless_env(tmp_path)
    args = ["denoise", str(src), str(out), "--model", "denoise-cnn", "--store", str(store), "--batch-size", "1",
            "--no-progress"]
    proc = subprocess.Popen(_cli(*args, "--runner", "local"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if sum(1 for _ in out.rglob("*.png")) >= 5:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = [r for r in iter_rows(out) if r["status"] == "ok"]
    assert 5 <= len(first) < N_IMAGES, "the first run must be killed midway"

    # rerun on Ray, still without torch anywhere (driver and workers)
    r = subprocess.run(_cli(*args, "--runner", "ray", "--workers", "2"), env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "_aeflow" / "summary.json").read_text())
    assert summary["counts"] == {"total": N_IMAGES, "ok": N_IMAGES - len(first), "failed": 0, "skipped": len(first)}
    ok_rows = collections.Counter(r["path"] for r in iter_rows(out) if r["status"] == "ok")
    assert len(ok_rows) == N_IMAGES and set(ok_rows.values()) == {1}
    assert len(list(out.rglob("*.png"))) == N_IMAGES
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert len(list((out / "_aeflow" / "manifest").glob("*.jsonl"))) == 2
