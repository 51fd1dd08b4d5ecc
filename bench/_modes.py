"""The contenders: (a) naive torch loop, (b) tight onnxruntime floor, (c) the aeflow CLI job; plus model-only runs."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench._models import BenchModel
from bench._proc import TreeSampler

STAGES = ("list", "read", "decode", "infer", "encode", "write", "manifest")
JPEG_QUALITY = 95  # the same quality aeflow's writer uses (pipeline.writer.JPEG_QUALITY)
CLI_TIMEOUT_S = 3 * 3600
# Ray titles an actor's process with the method it runs: seeing it marks the end of the job's start-up.
RAY_TASK_TITLE = "ray::MapWorker(MapBatches(WorkerStage)).submit"  # a CPU actor running a batch


class Stages:
    """Accumulated seconds per named stage."""

    def __init__(self):
        self.s = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.s[name] += time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.s[name] += seconds


def _result(mode: str, n_ok: int, wall: float, stages: Stages | None, **extra) -> dict:
    out = {"mode": mode, "images": n_ok, "wall_s": round(wall, 3),
           "images_per_s": round(n_ok / wall, 3) if wall else 0.0}
    if stages is not None:
        st = {k: round(v, 4) for k, v in stages.s.items()}
        st["other"] = round(max(0.0, wall - sum(stages.s.values())), 4)
        out["stages_s"] = st
    out.update(extra)
    return out


def _list(in_dir: Path, st: Stages) -> list[Path]:
    from aeflow.imageio import iter_image_paths

    with st("list"):
        return list(iter_image_paths(in_dir))


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _decode(data: bytes, input_size: int, draft: bool = False, channels: int = 3) -> np.ndarray:
    """Pillow decode to RGB (+ resize/centre crop to S×S for encoders, as the pipeline's reader does).

    draft: let libjpeg downscale encoder inputs in the DCT domain, as the job does (aeflow.imageio min_side);
    the floor uses it, so it stays a floor for the job; the naive loop does not.
    """
    from PIL import Image

    if draft and input_size:
        from aeflow.imageio import decode_image

        a = decode_image(data, channels=channels, min_side=input_size)
    else:
        a = np.asarray(Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB"))
        a = a[..., None] if a.ndim == 2 else a
    if input_size:
        from aeflow.imageio import fit_square

        a = fit_square(a, input_size)
    return a


def _encode_write(out_dir: Path, in_dir: Path, path: Path, image: np.ndarray, st: Stages) -> None:
    from PIL import Image

    with st("encode"):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    with st("write"):
        dst = out_dir / path.relative_to(in_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(buf.getvalue())


def _same_shape_runs(paths: list[Path], arrays: list[np.ndarray]):
    """Consecutive runs of equal-shape images (a batch must be one shape)."""
    start = 0
    for i in range(1, len(arrays) + 1):
        if i == len(arrays) or arrays[i].shape != arrays[start].shape:
            yield paths[start:i], np.stack(arrays[start:i])
            start = i


def run_naive(bm: BenchModel, in_dir: Path, out_dir: Path, device: str, threads: int, batch: int = 16) -> dict:
    """(a) One process: Pillow decode -> torch eager (threads = cores) -> Pillow encode, batches of `batch`."""
    import torch
    import torch.nn.functional as F

    from pipeline.runner import read_model_info

    torch.set_num_threads(threads)
    model = bm.torch.to(device).eval()
    normalize = read_model_info(bm.onnx).normalized
    st, vectors = Stages(), []
    t0 = time.perf_counter()
    paths = _list(in_dir, st)
    with torch.inference_mode():
        for chunk in _chunks(paths, batch):
            arrays = []
            for p in chunk:
                with st("read"):
                    data = p.read_bytes()
                with st("decode"):
                    arrays.append(_decode(data, bm.input_size, channels=bm.channels))
            for run_paths, x in _same_shape_runs(chunk, arrays):
                with st("infer"):
                    t = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div(255)
                    if bm.input_size:
                        z = model.encode(t)
                        z = z[0] if isinstance(z, (tuple, list)) else z
                        vectors.append((F.normalize(z, dim=1) if normalize else z).float().cpu().numpy())
                        continue
                    y = model(t).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                for p, img in zip(run_paths, y):
                    _encode_write(out_dir, in_dir, p, img, st)
    if vectors:
        with st("write"):
            out_dir.mkdir(parents=True, exist_ok=True)
            np.save(out_dir / "embeddings.npy", np.concatenate(vectors))
    model.cpu()
    return _result("naive", len(paths), time.perf_counter() - t0, st, batch=batch, threads=threads, device=device)


def ort_session(path: Path, device: str, threads: int):
    """An onnxruntime session like aeflow's Predictor: intra-op threads set, CUDA with HEURISTIC conv search."""
    import onnxruntime as ort

    from pipeline.predictor import session_options, session_providers

    if device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    return ort.InferenceSession(str(path), session_options(threads), providers=session_providers(device))


def run_floor(bm: BenchModel, in_dir: Path, out_dir: Path, device: str, threads: int, batch: int = 8) -> dict:
    """(b) One tight process: read, decode, the same ONNX model in onnxruntime, encode, write; no Ray, no manifest."""
    sess = ort_session(bm.onnx, device, threads)
    name = sess.get_inputs()[0].name
    st, vectors = Stages(), []
    t0 = time.perf_counter()
    paths = _list(in_dir, st)
    for chunk in _chunks(paths, batch):
        arrays = []
        for p in chunk:
            with st("read"):
                data = p.read_bytes()
            with st("decode"):
                arrays.append(_decode(data, bm.input_size, draft=True, channels=bm.channels))
        for run_paths, x in _same_shape_runs(chunk, arrays):
            with st("infer"):
                y = sess.run(None, {name: x})[0]
            if bm.input_size:
                vectors.append(y)
                continue
            for p, img in zip(run_paths, y):
                _encode_write(out_dir, in_dir, p, img, st)
    if vectors:
        with st("write"):
            out_dir.mkdir(parents=True, exist_ok=True)
            np.save(out_dir / "embeddings.npy", np.concatenate(vectors))
    return _result("floor", len(paths), time.perf_counter() - t0, st, batch=batch, threads=threads, device=device,
                   providers=sess.get_providers())


def aeflow_exe() -> list[str]:
    """The installed `aeflow` console script next to this Python, else `python -m aeflow.cli`."""
    exe = Path(sys.executable).with_name("aeflow")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "aeflow.cli"]


def run_cli(bm: BenchModel, in_dir: Path, out_dir: Path, device: str, extra: tuple[str, ...] = (),
            address: str | None = None, env: dict | None = None, label: str = "aeflow",
            cores: set[int] | None = None) -> dict:
    """(c) The real `aeflow JOB IN OUT --model ...` in a subprocess, fresh OUT; peak RSS of its whole process tree.

    cores: the CLI runs only on these (the scaling check puts the driver on the head node's cores).
    """
    from pipeline.manifest import iter_rows

    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [*aeflow_exe(), bm.job, str(in_dir), str(out_dir), "--model", bm.spec, "--store", str(bm.store),
           "--device", device, "--no-progress", *extra]
    if address:
        cmd += ["--address", address]
    env = dict(env if env is not None else os.environ, RAY_USAGE_STATS_ENABLED="0")
    if not address:
        env.pop("RAY_ADDRESS", None)  # a new local Ray instance, as `aeflow` does by default
    log = out_dir.with_name(out_dir.name + ".log")
    with open(log, "wb") as lf:
        t0 = time.perf_counter()
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=pin)
        sampler = TreeSampler(proc.pid, watch=RAY_TASK_TITLE).start()
        try:
            rc = proc.wait(timeout=CLI_TIMEOUT_S)
        finally:
            mem = sampler.stop()
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        wall = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`{' '.join(cmd)}` exited {rc}:\n{tail}")
    summary = json.loads((out_dir / "_aeflow" / "summary.json").read_text())
    busy = sum(r.get("seconds") or 0.0 for r in iter_rows(out_dir) if r.get("status") == "ok")
    ok = summary["counts"]["ok"]
    # from the first batch on: the rate without interpreter, Ray and actor start-up (shutdown still included)
    steady = None
    if mem.first_task_s is not None and wall > mem.first_task_s:
        steady = round(ok / (wall - mem.first_task_s), 3)
    return {
        "mode": label, "images": ok, "command": " ".join(cmd),
        "wall_s": summary["wall_s"], "images_per_s": summary["images_per_s"],
        "process_wall_s": round(wall, 3), "process_images_per_s": round(ok / wall, 3),
        "first_task_s": None if mem.first_task_s is None else round(mem.first_task_s, 2),
        "steady_images_per_s": steady,
        # the engine the default runner (auto) chose: in-process unless Ray is asked for or named
        "engine": summary.get("engine"),
        "ray_startup_s": summary.get("ray_startup_s", summary.get("startup_s")),
        "running_images_per_s": summary.get("images_per_s_running"),
        "workers": summary.get("workers"), "threads_per_worker": summary.get("threads_per_worker"),
        "providers": summary.get("providers"), "device": summary.get("device"),
        "worker_nodes": len(summary.get("worker_nodes") or []), "rows_by_node": summary.get("nodes"),
        # manifest rows: seconds = read + decode + share of the batch's inference + encode + write, per file
        "manifest_seconds_sum": round(busy, 3),
        "peak_rss_mib": round(mem.peak_rss_mib, 1), "peak_anon_mib": round(mem.peak_anon_mib, 1),
        "peak_processes": mem.peak_processes, "rss_samples": mem.samples,
    }
