"""Faults: a Ray worker killed mid-job, a full output disk, a corrupted or swapped model file.

The driver killed mid-job and rerun: tests/pipeline/test_process.py (test_killed_driver_resumes_without_loss_or_
duplicates); a transient Prefect task failure: test_prefect_retry.py.
"""
from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from aeflow.cli import main
from pipeline.manifest import iter_rows, load_state
from tests.conftest import make_photo


def _photos(d: Path, n: int, size: int = 48) -> Path:
    d.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(make_photo(size, size, i)).save(d / f"{i:03d}.png")
    return d


def _descendant_pids(root: int) -> dict[int, str]:
    """pid -> command line of every process below root (our own Ray's processes only)."""
    parent, cmd = {}, {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
    out = {}
    for pid in parent:
        q = pid
        while q in parent and q > 1:
            q = parent[q]
            if q == root:
                out[pid] = cmd[pid]
                break
    return out


def test_killed_ray_worker_batch_is_retried_nothing_lost(ray_session, store, tmp_path):
    from pipeline.runner import JobConfig, run_job

    n = 60
    src, out = _photos(tmp_path / "in", n, 64), tmp_path / "out"
    cfg = JobConfig(job="denoise", in_dir=src, out_dir=out, model="denoise-cnn", store=store, runner="ray",
                    batch_size=1, workers=2, progress=False)
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(summary=run_job(cfg)))
    job.start()
    killed = None
    deadline = time.time() + 240
    while job.is_alive() and time.time() < deadline and killed is None:
        done = sum(1 for r in iter_rows(out) if r["status"] == "ok")
        # a predictor actor that is running a batch (Ray titles its process so)
        actors = {pid: c for pid, c in _descendant_pids(os.getpid()).items()
                  if c.startswith("ray::MapWorker(MapBatches(") and ").submit" in c}
        if done >= 3 and actors:
            killed = min(actors)
            os.kill(killed, signal.SIGKILL)  # mid-job, in the middle of a batch
        time.sleep(0.02)
    job.join(timeout=300)
    assert killed is not None, "the job ended before a worker could be killed"
    s = result["summary"]
    assert s["restarted_workers"] >= 1  # Ray restarted the killed actor and resent its batches to it
    assert s["counts"] == {"total": n, "ok": n, "failed": 0, "skipped": 0} and s["exit_code"] == 0
    ok = collections.Counter(r["path"] for r in iter_rows(out) if r["status"] == "ok")
    assert len(ok) == n and set(ok.values()) == {1}  # nothing lost, nothing twice
    assert len(list(out.glob("*.png"))) == n and not list(out.rglob("*.tmp"))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs as OUT_DIR's disk (we run as root here), unmounted afterwards."""
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, text=True)
    assert r.returncode == 0, f"this test needs `mount -t tmpfs` (root): {r.stderr}"
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_full_disk_stops_early_with_a_clear_error_then_rerun_completes(store, small_disk, tmp_path, capsys, runner,
                                                                       request):
    if runner == "ray":
        request.getfixturevalue("ray_session")  # the session's Ray: the error comes back from an actor
    n = 40
    src = _photos(tmp_path / "in", n, 64)
    out = small_disk / "out"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 - 128) * 1024)  # leaves ~128 KiB: room for a few outputs only
    args = ["denoise", str(src), str(out), "--model", "denoise-cnn", "--store", str(store), "--runner", runner,
            "--workers", "2", "--batch-size", "4", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no space left on the disk of" in err and "rerun the same command to resume" in err
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < n  # it stopped early ...
    rows = list(iter_rows(out))
    assert not [r for r in rows if r["status"] == "failed"]  # ... rather than failing every remaining file
    if runner == "local":  # (on Ray, the other actor is killed when the job stops: it may leave a hidden temp)
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no partial file left
    for p in written:  # every visible output is complete
        with Image.open(p) as im:
            im.load()
    for r in rows:
        assert (out / r["output"]).is_file()  # an ok row always has its output

    filler.unlink()  # space freed: the same command resumes
    assert main(args) == 0
    state = load_state(out)
    assert len(state) == n and {r["status"] for r in state.values()} <= {"ok", "skipped"}
    ok = collections.Counter(r["path"] for r in iter_rows(out) if r["status"] == "ok")
    assert set(ok.values()) == {1}  # each input written once in the record
    assert len(list(out.glob("*.png"))) == n and not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def store_copy(store, tmp_path) -> Path:
    """A private copy of the session store, to damage."""
    return Path(shutil.copytree(store, tmp_path / "store"))


def _one_image(tmp_path: Path) -> Path:
    return _photos(tmp_path / "one", 1, 16)


def test_corrupted_model_file_is_refused(store_copy, tmp_path, capsys):
    model = store_copy / "denoise" / "1" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    model.write_bytes(bytes(data))
    rc = main(["denoise", str(_one_image(tmp_path)), str(tmp_path / "out"), "--model", "denoise", "--store",
               str(store_copy), "--runner", "local", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "sha256 mismatch" in err and str(model) in err
    assert not (tmp_path / "out" / "000.png").exists()


def test_swapped_model_file_is_refused(store_copy, tmp_path, capsys):
    model = store_copy / "denoise" / "1" / "model.onnx"
    shutil.copy(store_copy / "upscale-x2" / "1" / "model.onnx", model)  # a valid ONNX file, the wrong one
    rc = main(["denoise", str(_one_image(tmp_path)), str(tmp_path / "out"), "--model", "denoise:1", "--store",
               str(store_copy), "--runner", "local", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "sha256 mismatch" in err and str(model) in err


def test_model_path_without_card_is_refused(store, tmp_path, capsys):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(store / "denoise" / "1" / "model.onnx", loose / "model.onnx")
    rc = main(["denoise", str(_one_image(tmp_path)), str(tmp_path / "out"), "--model", str(loose / "model.onnx"),
               "--store", str(store), "--runner", "local", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "no card.json beside it" in err and str(loose / "model.onnx") in err
