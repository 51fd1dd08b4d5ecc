"""Does this machine scale? aeflow's one-thread worker path in 1 process vs 2 side by side, no Ray.

Each process loads the shipped denoiser (int8 where shipped, as the CLI on CPU), runs one warm-up batch, waits for
a common start time, then runs BatchWorker.process (read, decode, predict, encode, write) over the photos for the
same window; the pair's summed rate over the lone rate is what two 1-CPU Ray nodes could reach at best. Usage:

    .venv/bin/python bench/pair_scaling.py [--photos DIR] [--seconds 12] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _one(photos: Path, seconds: float, start: float, out: Path) -> dict:
    """Run the worker path until `seconds` after `start`; images/s and CPU ms per image."""
    from aeflow.store import INT8_FILE, ModelStore
    from pipeline.reader import Task
    from pipeline.worker import BatchWorker, WorkerSpec

    ref = ModelStore(out / "empty-store").resolve("denoise")
    path = ref.file(INT8_FILE) if INT8_FILE in ref.card.get("files", {}) else ref.onnx_path()
    files = sorted(photos.rglob("*.jpg"))
    spec = WorkerSpec(job="denoise", model_path=str(path), model_name=ref.name, model_version=ref.version,
                      model_sha256="-", out_dir=str(out / "images"), threads=1, batch_size=8)
    worker = BatchWorker(spec)
    tasks = [Task(path=str(f), rel=f.name, out=f"{i}.jpg", size=f.stat().st_size, mtime_ns=0)
             for i, f in enumerate(files)]
    worker.process(tasks[:8])  # warm session and arena
    while time.time() < start:
        time.sleep(0.001)
    n = i = 0
    t, c = time.perf_counter(), time.process_time()
    while time.perf_counter() - t < seconds:
        k = (i * 8) % max(1, len(tasks) - 8)
        n += len(worker.process(tasks[k:k + 8]))
        i += 1
    wall = time.perf_counter() - t
    return {"images_per_s": round(n / wall, 2), "cpu_ms_per_image": round(1000 * (time.process_time() - c) / n, 1)}


def _spawn(k: int, photos: Path, seconds: float, work: Path) -> list[dict]:
    start = time.time() + 8  # every process has loaded its model by then
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(photos), str(seconds), str(start),
                               str(work / f"p{j}")], stdout=subprocess.PIPE, text=True, env=env) for j in range(k)]
    out = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a child process failed")
    return out


def main(argv: list[str] | None = None) -> None:
    """Alternate 1 process and 2 processes for --rounds rounds; print each round and the pooled ratio."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        photos, seconds, start, out = argv[1:]
        print(json.dumps(_one(Path(photos), float(seconds), float(start), Path(out))))
        return
    from bench._photos import make_photos

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, default=None, help="JPEG folder (default: 400 generated 256² photos)")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    photos = a.photos or make_photos(Path(tempfile.gettempdir()) / "aeflow-bench", 400, 256)
    work = Path(tempfile.mkdtemp(prefix="aeflow-pair-"))
    one = two = 0.0
    try:
        for r in range(a.rounds):
            alone = _spawn(1, photos, a.seconds, work)
            pair = _spawn(2, photos, a.seconds, work)
            s1, s2 = alone[0]["images_per_s"], sum(x["images_per_s"] for x in pair)
            one, two = one + s1, two + s2
            print(json.dumps({"round": r + 1, "alone": alone, "pair": pair, "ratio": round(s2 / s1, 3)}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"pooled_ratio": round(two / one, 3), "rounds": a.rounds, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
