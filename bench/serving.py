"""Online serving under a bounded load (`aeflow api` on localhost) vs the batch jobs on the same images.

    .venv/bin/python bench/serving.py --requests 200 --clients 16 --size 128          # both batching modes
    .venv/bin/python bench/serving.py --store ~/aeflow-store --batching on              # trained models

Each endpoint (/denoise, /embed) gets every image of the folder once, from --clients threads with keep-alive
connections; then the same folder goes through `aeflow denoise` / `aeflow embed` (Ray runner). Prints a
markdown table: requests/s, p50/p95/p99 latency, errors, mean serve.batch size. Localhost only.
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` (and the checkout's packages) importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ENDPOINTS = ("denoise", "embed")
JOBS = {"denoise": "denoise", "embed": "embed"}


def _load(url: str, endpoint: str, bodies: list[bytes], clients: int) -> dict:
    """POST every body once to /endpoint from `clients` threads; latencies (s) and error count."""
    host, port = url.removeprefix("http://").split(":")
    chunks = [bodies[i::clients] for i in range(clients)]

    def client(chunk: list[bytes]) -> tuple[list[float], int]:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        lat, errors = [], 0
        for body in chunk:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/" + endpoint, body=body, headers={"Content-Type": "image/jpeg"})
                r = conn.getresponse()
                r.read()
                errors += r.status != 200
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
            lat.append(time.perf_counter() - t0)
        conn.close()
        return lat, errors

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, chunks))
    wall = time.perf_counter() - t0
    lat = np.array([x for r in results for x in r[0]])
    return {"requests": len(lat), "errors": sum(r[1] for r in results), "wall_s": wall, "rps": len(lat) / wall,
            "p50": np.percentile(lat, 50), "p95": np.percentile(lat, 95), "p99": np.percentile(lat, 99)}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch_stats(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the serve.batch size histogram per endpoint, from /metrics."""
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    sums, counts = {}, {}
    for line in text.splitlines():
        for name, into in (("aeflow_batch_size_sum", sums), ("aeflow_batch_size_count", counts)):
            if line.startswith(name + "{"):
                into[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return {e: (sums[e], counts[e]) for e in counts}


def _serve_round(args, store: Path, specs: dict[str, str], bodies: list[bytes], batching: bool) -> list[dict]:
    from ray import serve

    from pipeline.serving import ServeConfig, start

    cfg = ServeConfig(port=free_port(), store=str(store), device=args.device, denoise_model=specs["denoise"],
                      embed_model=specs["embed"], replicas=args.replicas, threads=args.threads,
                      max_batch_size=args.batch_size if batching else 1, batch_wait_s=args.batch_wait_ms / 1000)
    url = start(cfg)
    try:
        for e in ENDPOINTS:  # warm up: sessions, first shapes, connections
            _load(url, e, bodies[:args.clients], args.clients)
        rows = []
        for e in ENDPOINTS:
            (s0, c0), r = _batch_stats(url).get(e, (0.0, 0.0)), _load(url, e, bodies, args.clients)
            s1, c1 = _batch_stats(url).get(e, (0.0, 0.0))
            rows.append({"mode": f"api, batching {'on (max ' + str(args.batch_size) + ')' if batching else 'off'}",
                         "endpoint": e, **r, "batch": (s1 - s0) / (c1 - c0) if c1 > c0 else None})
        return rows
    finally:
        serve.shutdown()


def _job_round(args, store: Path, specs: dict[str, str], in_dir: Path, work: Path) -> list[dict]:
    from pipeline.runner import JobConfig, run_job

    rows = []
    for e in ENDPOINTS:
        out = work / f"job-{e}"
        shutil.rmtree(out, ignore_errors=True)
        s = run_job(JobConfig(job=JOBS[e], in_dir=in_dir, out_dir=out, model=specs[e], store=store,
                              device=args.device, runner="ray", batch_size=args.batch_size, progress=False))
        rows.append({"mode": "batch job (ray runner)", "endpoint": e, "requests": s["counts"]["total"],
                     "errors": s["counts"]["failed"], "wall_s": s["wall_s"], "rps": s["images_per_s"]})
    return rows


def _table(rows: list[dict], clients: int) -> str:
    def ms(v):
        return f"{1000 * v:.0f}" if v is not None else "–"

    out = ["| mode | endpoint | requests | clients | errors | req/s | p50 ms | p95 ms | p99 ms | mean batch |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        api = r["mode"].startswith("api")
        out.append(f"| {r['mode']} | {r['endpoint']} | {r['requests']} | {clients if api else '–'} | {r['errors']} | "
                   f"{r['rps']:.1f} | {ms(r.get('p50'))} | {ms(r.get('p95'))} | {ms(r.get('p99'))} | "
                   f"{'%.1f' % r['batch'] if r.get('batch') else '–'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the markdown table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200, help="images (= requests per endpoint)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="photo side in pixels")
    p.add_argument("--batching", choices=("on", "off", "both"), default="both")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads per replica (0: auto)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--store", type=Path, default=None,
                   help="a store with trained 'denoise' and 'ae' models (default: untrained default-size models)")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temp dir, removed after)")
    p.add_argument("--no-jobs", dest="jobs", action="store_false", help="skip the batch-job comparison")
    args = p.parse_args(argv)

    import ray

    from bench._photos import make_photos

    work = args.work or Path(tempfile.mkdtemp(prefix="aeflow-bench-serving-"))
    try:
        if args.store:
            store, specs = args.store, {"denoise": "denoise", "embed": "ae"}
        else:
            from bench._models import untrained_models

            store = work / "store"
            shutil.rmtree(store, ignore_errors=True)
            models = untrained_models(list(ENDPOINTS), store)
            specs = {e: models[e].spec for e in ENDPOINTS}
        in_dir = make_photos(work / "photos", args.requests, args.size)
        bodies = [f.read_bytes() for f in sorted(in_dir.rglob("*.jpg"))]
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        rows = []
        for batching in {"on": [True], "off": [False], "both": [True, False]}[args.batching]:
            rows += _serve_round(args, store, specs, bodies, batching)
        if args.jobs:
            rows += _job_round(args, store, specs, in_dir, work)
        print(f"\n{args.requests} JPEG photos {args.size}x{args.size}, {os.cpu_count()} CPUs, models: "
              f"{'from ' + str(args.store) if args.store else 'untrained default-size (bench._models)'}\n")
        print(_table(rows, args.clients))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
