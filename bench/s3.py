"""S3 against local files: the same `aeflow JOB` on the same photos, from and to a local S3 server and a local disk.

    python bench/s3.py --n 300 --size 256 --jobs denoise,embed --out bench/results/s3.json

Starts moto's standalone server on 127.0.0.1 (the tests' server; MinIO with `--endpoint URL` and the AWS_*
variables set), uploads the generated photos once, then for each job runs, in alternation, `--repeat` times:
local → local, S3 → S3 and S3 → local, each a fresh OUT, through the CLI as a subprocess, and reports each run's
images/s (summary.json's `images_per_s`) and the ratio S3/local of the medians. Also measures the two client
libraries this layer could sit on, on the same server: GET and PUT of `--objects` small objects, one thread,
through aeflow.storage (boto3) and through pyarrow.fs.S3FileSystem, and a listing of them, plus boto3 GETs from
2 and 8 threads (the ceiling of the server itself, which shares the machine with the job).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _photos(folder: Path, n: int, size: int) -> Path:
    from bench._photos import make_photos

    return make_photos(folder, n, size)


def _server() -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.time()
    while time.time() - t < 60:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto did not start")


def _job(job: str, src: str, out: str, env: dict) -> dict:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "aeflow.cli", job, src, out, "--no-progress"], env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode not in (0, 3):
        raise RuntimeError(r.stderr[-2000:])
    from aeflow import storage
    from pipeline.manifest import read_summary

    s = read_summary(out if storage.is_remote(out) else Path(out))
    return {"images_per_s": s["images_per_s"], "ok": s["counts"]["ok"], "process_s": round(wall, 2),
            "s3_retries": s.get("s3_retries", 0)}


def _clients(endpoint: str, bucket: str, n: int) -> dict:
    """GET/PUT of n 64 KB objects and one listing, through boto3 (aeflow.storage) and pyarrow.fs."""
    import pyarrow.fs as pafs

    from aeflow import storage

    data = os.urandom(64 * 1024)
    out = {}
    t = time.perf_counter()
    for i in range(n):
        storage.write_bytes(f"s3://{bucket}/c/boto3/{i:05d}", data)
    out["boto3_put_per_s"] = round(n / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    for i in range(n):
        storage.read_bytes(f"s3://{bucket}/c/boto3/{i:05d}")
    out["boto3_get_per_s"] = round(n / (time.perf_counter() - t), 1)
    from concurrent.futures import ThreadPoolExecutor

    for threads in (2, 8):  # the job's own concurrency (a batch's GETs in flight together): the server's ceiling
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda i: storage.read_bytes(f"s3://{bucket}/c/boto3/{i:05d}"), range(n)))
        out[f"boto3_get_{threads}_threads_per_s"] = round(n / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    listed = sum(1 for _ in storage.iter_files(f"s3://{bucket}/c/boto3"))
    out["boto3_list_s"] = round(time.perf_counter() - t, 3)
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1")
    t = time.perf_counter()
    for i in range(n):
        with fs.open_output_stream(f"{bucket}/c/arrow/{i:05d}") as f:
            f.write(data)
    out["pyarrow_put_per_s"] = round(n / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    for i in range(n):
        with fs.open_input_stream(f"{bucket}/c/arrow/{i:05d}") as f:
            f.read()
    out["pyarrow_get_per_s"] = round(n / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    infos = fs.get_file_info(pafs.FileSelector(f"{bucket}/c/arrow", recursive=True))
    out["pyarrow_list_s"] = round(time.perf_counter() - t, 3)
    out["objects"] = n
    assert listed == n and len(infos) == n
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--jobs", default="denoise,embed")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--objects", type=int, default=500)
    ap.add_argument("--endpoint", default=None, help="an S3 endpoint to use instead of a moto server started here")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    saved_env = dict(os.environ)
    try:
        return _run(a, argv)
    finally:  # the AWS settings below are this run's only (the tests call main() in their own process)
        os.environ.clear()
        os.environ.update(saved_env)
        from aeflow import storage

        storage._state.__dict__.clear()


def _run(a, argv) -> int:
    work = Path(tempfile.mkdtemp(prefix="aeflow-s3-bench-"))
    photos = _photos(work, a.n, a.size)
    proc = None
    if a.endpoint:
        endpoint = a.endpoint
    else:
        proc, endpoint = _server()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    env = dict(os.environ)
    from aeflow import storage

    bucket = f"aeflow-bench-{os.getpid()}"
    try:
        storage.create_bucket(bucket)
        for p in sorted(photos.rglob("*.jpg")):
            storage.write_bytes(f"s3://{bucket}/in/{p.relative_to(photos).as_posix()}", p.read_bytes())
        result = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                              "python": platform.python_version()},
                  "server": "moto (local process)" if proc else endpoint, "n": a.n, "size": a.size, "jobs": {}}
        for job in a.jobs.split(","):
            runs: dict[str, list] = {"local": [], "s3": [], "s3_to_local": []}
            for r in range(a.repeat):
                runs["local"].append(_job(job, str(photos), str(work / f"out-{job}-{r}"), env))
                runs["s3"].append(_job(job, f"s3://{bucket}/in", f"s3://{bucket}/out-{job}-{r}", env))
                runs["s3_to_local"].append(_job(job, f"s3://{bucket}/in", str(work / f"mix-{job}-{r}"), env))
            med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in runs.items()}
            result["jobs"][job] = {"runs": runs, "median_images_per_s": med,
                                   "s3_over_local": round(med["s3"] / med["local"], 3),
                                   "s3_to_local_over_local": round(med["s3_to_local"] / med["local"], 3)}
            print(job, json.dumps(result["jobs"][job]["median_images_per_s"]),
                  "S3/local", result["jobs"][job]["s3_over_local"], flush=True)
        result["clients"] = _clients(endpoint, bucket, a.objects)
        print("clients", json.dumps(result["clients"]), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
    result["command"] = "python bench/s3.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
