"""Peak memory of one large photo through the `aeflow` CLI with its defaults: denoise a 60-megapixel photo,
upscale a 15-megapixel one to 60.

    python bench/memory.py [--work DIR] [--out bench/results/DATE-memory.json] [--runner auto|local|ray]

The photo is a real one (scikit-image's astronaut, mirrored into a large mosaic, with Gaussian noise for
denoise) so the codecs see photographic content. The CLI runs in a subprocess; its process tree's summed RSS
is sampled from /proc every 0.2 s (bench/_proc.py), and so is each process's own peak, which is a worker's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._modes import aeflow_exe  # noqa: E402
from bench._proc import TreeSampler, machine  # noqa: E402

CASES = (("denoise", 60.0), ("upscale", 15.0))  # job, input megapixels (upscale x2: 60 MP out)
TIMEOUT_S = 1800


def big_photo(megapixels: float, noisy: bool, seed: int = 0) -> np.ndarray:
    """A (H, W, 3) uint8 mosaic of mirrored copies of a real photo, about `megapixels` MP, 4:3."""
    from skimage import data

    base = data.astronaut()
    w = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    h = int(round(megapixels * 1e6 / w))
    tile = np.concatenate([base, base[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[::-1]], axis=0)
    reps = (-(-h // tile.shape[0]), -(-w // tile.shape[1]), 1)
    img = np.tile(tile, reps)[:h, :w]
    if noisy:
        rng = np.random.default_rng(seed)
        img = np.clip(img.astype(np.float32) + rng.normal(0, 15, img.shape), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def run(job: str, in_dir: Path, out_dir: Path, runner: str) -> dict:
    """`aeflow JOB IN OUT --runner R --no-progress` with every other default; peaks of its process tree."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [*aeflow_exe(), job, str(in_dir), str(out_dir), "--runner", runner, "--no-progress"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    sampler = TreeSampler(proc.pid).start()
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    mem = sampler.stop()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{out.decode(errors='replace')[-3000:]}")
    summary = json.loads((out_dir / "_aeflow" / "summary.json").read_text())
    return {"job": job, "command": " ".join(cmd), "engine": summary.get("engine"), "wall_s": round(wall, 2),
            "tree_peak_rss_mib": round(mem.peak_rss_mib, 1), "tree_peak_anon_mib": round(mem.peak_anon_mib, 1),
            "worker_peak_rss_mib": round(mem.peak_process_rss_mib, 1), "processes": mem.peak_processes,
            "samples": mem.samples, "model": summary.get("model"), "counts": summary["counts"]}


def main(argv: list[str] | None = None) -> int:
    """Run the cases; print and write the report."""
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/aeflow-bench-memory"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--runner", default="auto", choices=("auto", "local", "ray"))
    args = ap.parse_args(argv)
    results = []
    for job, mp in CASES:
        in_dir = args.work / f"in-{job}-{mp:g}mp"
        src = in_dir / "photo.png"
        if not src.is_file():
            in_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(big_photo(mp, noisy=job == "denoise")).save(src, compress_level=1)
        r = run(job, in_dir, args.work / f"out-{job}", args.runner)
        r["input_megapixels"] = mp
        print(json.dumps(r), flush=True)
        results.append(r)
        shutil.rmtree(args.work / f"out-{job}", ignore_errors=True)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "runner": args.runner, "results": results}
    out = args.out or REPO / "bench" / "results" / f"{datetime.now(timezone.utc):%Y-%m-%d}-memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
