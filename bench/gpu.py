"""The GPU path in one prepared process: model-only onnxruntime, the aeflow job end to end, a decode floor, torch.

    python bench/gpu.py --out $OUT/gpu.json            # the GPU machine: onnxruntime-gpu, all its cores
    python bench/gpu.py --dry-run --out /tmp/gpu.json  # anywhere (CI): CPU provider, tiny inputs, short sections

For each job (denoise, upscale x2, embed), on the shipped models and on generated JPEGs, in this order:
1. model-only: the graph in onnxruntime with IO binding (input and output stay on the device), fp32 and fp16;
2. the `aeflow` job end to end (`--runner local`, the in-process engine): precision auto (fp16 on CUDA) and
   fp32, IO binding on and off ($AEFLOW_IO_BINDING), and denoise/upscale of one 4000x3000 photo (tiling);
3. a decode-only floor: the job's own read + decode (pipeline.inference.decode_for) on every core;
4. torch eager fp32 and fp16, and torch.compile fp16, on the same weights, for reference.
Model-only, floor and torch sections each run for --seconds. GPU utilisation is sampled with nvidia-smi
every 200 ms and averaged per section. One JSON file: images/s, utilisation, and the providers used.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._photos import make_photos  # noqa: E402
from bench._proc import machine  # noqa: E402
from pipeline.defaults import DEFAULT_MODELS as MODELS  # noqa: E402

JOBS = ("denoise", "upscale", "embed")
TARGETS = {"denoise_e2e_over_model_only": 0.75, "fp16_over_fp32": 1.5, "embed_over_decode_floor": 0.8}


class GpuSampler:
    """nvidia-smi's utilisation and memory every 200 ms in the background; `window(t0, t1)` averages a section."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "200"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.perf_counter(), util, mem))

    def window(self, t0: float, t1: float) -> dict | None:
        """Mean and max utilisation (%) and max memory (MiB) between t0 and t1; None without nvidia-smi."""
        got = [(u, m) for t, u, m in self.samples if t0 <= t <= t1]
        if self.proc is None or not got:
            return None
        u = [g[0] for g in got]
        return {"util_mean": round(float(np.mean(u)), 1), "util_max": max(u), "mem_max_mib": max(g[1] for g in got),
                "samples": len(got)}

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()


def timed(fn, n_images: int, seconds: float, sampler: GpuSampler, sync=None) -> dict:
    """Run fn (one batch of n_images) after one warm-up call for `seconds`; images/s and the GPU over that time."""
    fn()
    if sync:
        sync()
    t0 = time.perf_counter()
    calls = 0
    while True:
        fn()
        calls += 1
        if sync:
            sync()
        t1 = time.perf_counter()
        if t1 - t0 >= seconds:
            break
    return {"images_per_s": round(n_images * calls / (t1 - t0), 2), "calls": calls, "gpu": sampler.window(t0, t1)}


def ort_model_only(path: Path, x: np.ndarray, device: str, threads: int, seconds: float,
                   sampler: GpuSampler) -> dict:
    """The graph with IO binding: the input copied to the device once, the output left there."""
    import onnxruntime as ort

    from pipeline.predictor import session_options, session_providers

    sess = ort.InferenceSession(str(path), session_options(threads), providers=session_providers(device))
    where = "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    binding = sess.io_binding()
    binding.bind_ortvalue_input(sess.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x, where, 0))
    binding.bind_output(sess.get_outputs()[0].name, where)
    out = timed(lambda: sess.run_with_iobinding(binding), len(x), seconds, sampler)
    return {**out, "providers": sess.get_providers(), "graph": path.name}


def fp16_graph(ref, work: Path) -> Path:
    """The version's fp16 graph; encoders ship none, so one is converted here (benchmark only, no PSNR gate)."""
    from aeflow.store import FP16_FILE

    if FP16_FILE in ref.card.get("files", {}):
        return ref.file(FP16_FILE)
    from models.half import convert_fp16

    out = work / f"{ref.name}.fp16.onnx"
    convert_fp16(ref.onnx_path(), out)
    return out


def _decode_one(args) -> int:
    from aeflow.imageio import decode_with_header
    from pipeline.reader import read_bytes

    path, channels, side = args
    decode_with_header(read_bytes(path), channels, min_side=side)  # what pipeline.inference.decode_for does
    return 1


def decode_floor(paths: list[str], channels: int, side: int | None, cores: int, seconds: float) -> dict:
    """The job's read + decode of the same files on `cores` processes, repeated for `seconds`: images/s."""
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_decode_one, [(p, channels, side) for p in paths[:cores]]))  # workers up and warm
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            n += sum(pool.map(_decode_one, [(p, channels, side) for p in paths], chunksize=16))
        wall = time.perf_counter() - t0
    return {"images_per_s": round(n / wall, 2), "processes": cores, "decoder": "Pillow (decode_with_header)"}


def run_job(job: str, in_dir: Path, out: Path, store: Path, device: str, precision: str, binding: str) -> dict:
    """`aeflow JOB IN OUT` in a subprocess (in-process engine); its summary's rate, graph and providers."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "aeflow.cli", job, str(in_dir), str(out), "--model", MODELS[job], "--store",
           str(store), "--device", device, "--runner", "local", "--precision", precision, "--no-progress"]
    env = dict(os.environ, AEFLOW_IO_BINDING=binding)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout)[-2000:], "command": " ".join(cmd)}
    s = json.loads((out / "_aeflow" / "summary.json").read_text())
    return {"images_per_s": s["images_per_s"], "images": s["counts"]["ok"], "wall_s": s["wall_s"],
            "process_wall_s": round(wall, 2), "precision": s.get("precision"), "device": s.get("device"),
            "providers": s.get("providers"), "io_binding": binding, "command": " ".join(cmd)}


def torch_reference(model, x: np.ndarray, device: str, seconds: float, sampler: GpuSampler,
                    compile_: bool) -> dict:
    """torch eager fp32 / fp16 and torch.compile fp16 on one batch (fp16 and compile on CUDA only)."""
    import torch

    encoder = callable(getattr(model, "encode", None))
    t = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div(255)
    sync = torch.cuda.synchronize if device == "cuda" else None

    def go(m, inp):
        f = m.encode if encoder else m

        def call():
            with torch.inference_mode():
                f(inp)
        return call

    model = model.to(device).eval()
    out = {"torch_fp32": timed(go(model, t), len(x), seconds, sampler, sync)}
    if device != "cuda":
        return {**out, "note": "fp16 and torch.compile are measured on CUDA only"}
    half = model.half().to(memory_format=torch.channels_last)
    th = t.half().contiguous(memory_format=torch.channels_last)
    out["torch_fp16_channels_last"] = timed(go(half, th), len(x), seconds, sampler, sync)
    if compile_:
        try:
            t0 = time.perf_counter()
            compiled = torch.compile(half, mode="max-autotune-no-cudagraphs")
            go(compiled, th)()
            out["torch_compile_fp16"] = {**timed(go(compiled, th), len(x), seconds, sampler, sync),
                                         "compile_s": round(time.perf_counter() - t0, 1)}
        except Exception as exc:  # noqa: BLE001 - a failed compile is a result to report
            out["torch_compile_fp16"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    model.float()
    return out


def big_photo(work: Path, size: tuple[int, int]) -> Path:
    """A folder with one large JPEG (a benchmark source photo, resized) for the tiled path."""
    from PIL import Image

    from bench._photos import _sources

    d = work / f"big-{size[0]}x{size[1]}"
    if not (d / "big.jpg").is_file():
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_sources()[0]).resize(size, Image.BICUBIC).save(d / "big.jpg", quality=90)
    return d


def bench_job(job: str, args, store: Path, photos: Path, big: Path, device: str, sampler: GpuSampler) -> dict:
    """Sections 1-4 for one job."""
    from aeflow.store import ModelStore
    from bench._models import stored_models

    ref = ModelStore(store).resolve(MODELS[job])
    info = ref.card["onnx"]["metadata"]
    s = int(info.get("aeflow.input_size") or 0) or args.size
    c = int(info.get("aeflow.channels") or 3) if job == "embed" else 3
    x = np.random.default_rng(0).integers(0, 256, (args.batch, s, s, c), dtype=np.uint8)
    res: dict = {"model": ref.id, "batch": args.batch, "input": [s, s, c]}
    t0 = time.perf_counter()
    res["model_only"] = {"fp32": ort_model_only(ref.onnx_path(), x, device, args.cores, args.seconds, sampler),
                         "fp16": ort_model_only(fp16_graph(ref, args.work), x, device, args.cores, args.seconds,
                                                sampler)}
    runs = {}
    for precision, binding in (("auto", "auto"), ("auto", "0"), ("fp32", "auto")):
        t1 = time.perf_counter()
        r = run_job(job, photos, args.work / f"out-{job}", store, args.device, precision, binding)
        runs[f"precision_{precision}_binding_{binding}"] = {**r, "gpu": sampler.window(t1, time.perf_counter())}
    if job != "embed":
        runs["big_photo"] = run_job(job, big, args.work / f"out-{job}-big", store, args.device, "auto", "auto")
    res["job"] = runs
    paths = sorted(str(p) for p in photos.rglob("*.jpg"))
    res["decode_floor"] = decode_floor(paths, c, s if job == "embed" else None, args.cores, args.seconds)
    try:
        bm = stored_models([job], store)[job]
        res["torch"] = torch_reference(bm.torch, x, device, args.seconds, sampler, args.compile and not args.dry_run)
    except Exception as exc:  # noqa: BLE001
        res["torch"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def ratios(results: dict) -> dict:
    """The issue's targets, as measured: end to end over model-only, fp16 over fp32, embed over its decode floor."""
    def rate(d, *keys):
        for k in keys:
            d = (d or {}).get(k)
        return d

    out = {}
    for job, r in results.items():
        fp32, fp16 = rate(r, "model_only", "fp32", "images_per_s"), rate(r, "model_only", "fp16", "images_per_s")
        e2e = rate(r, "job", "precision_auto_binding_auto", "images_per_s")
        if fp32 and fp16:
            out[f"{job}_fp16_over_fp32"] = round(fp16 / fp32, 3)
        best = max(v for v in (fp32, fp16) if v) if (fp32 or fp16) else None
        if e2e and best:
            out[f"{job}_e2e_over_model_only"] = round(e2e / best, 3)
        floor = rate(r, "decode_floor", "images_per_s")
        if e2e and floor:
            out[f"{job}_e2e_over_decode_floor"] = round(e2e / floor, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--dry-run", action="store_true", help="CPU provider, tiny inputs, short sections (CI)")
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--n", type=int, default=2000, help="256x256 JPEGs per job run")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64, help="images per model-only and torch call")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each timed section")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "aeflow-gpu-bench")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.n, args.size, args.batch, args.seconds = min(args.n, 12), 64, 4, min(args.seconds, 0.3)
    args.device = "cpu" if args.dry_run else "cuda"
    args.work.mkdir(parents=True, exist_ok=True)
    import onnxruntime as ort

    if args.device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if args.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SystemExit(f"no CUDAExecutionProvider in this onnxruntime ({ort.get_available_providers()}): "
                         "install onnxruntime-gpu (bench/gpu_wheels.sh), or use --dry-run")
    store = args.work / "empty-store"  # nothing of the user's: the jobs resolve the shipped models
    photos = make_photos(args.work, args.n, args.size)
    big = big_photo(args.work, (400, 300) if args.dry_run else (4000, 3000))
    sampler = GpuSampler()
    t0 = time.time()
    results = {}
    try:
        for job in [j.strip() for j in args.jobs.split(",") if j.strip()]:
            print(f"[gpu bench] {job} ...", flush=True)
            results[job] = bench_job(job, args, store, photos, big, args.device, sampler)
    finally:
        sampler.stop()
    doc = {"command": " ".join(["python bench/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
           "dry_run": args.dry_run, "device": args.device, "machine": machine(),
           "available_providers": ort.get_available_providers(), "nvidia_smi": sampler.proc is not None,
           "settings": {k: str(v) for k, v in vars(args).items()}, "results": results, "ratios": ratios(results),
           "targets": TARGETS, "seconds": round(time.time() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["ratios"], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
