"""Benchmark (not a test): `aeflow denoise` on ~200 generated 256x256 JPEGs, Ray and local runners, vs a plain loop.

Run: .venv/bin/python tests/pipeline/bench_denoise.py [N] [WORKDIR]
"""
from __future__ import annotations

import io
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_models import dncnn, photo, register, save  # noqa: E402


def plain_loop(src: Path, out: Path, model_path: str, threads: int) -> float:
    """decode -> onnxruntime -> encode -> write, one image at a time, in this process; returns images/s."""
    import onnxruntime as ort
    from PIL import Image

    from aeflow.imageio import decode_image, iter_image_paths

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    t0, n = time.perf_counter(), 0
    for p in iter_image_paths(src):
        img = decode_image(p.read_bytes())
        y = sess.run(None, {"image": img[None]})[0][0]
        buf = io.BytesIO()
        Image.fromarray(y).save(buf, format="JPEG", quality=95)
        dst = out / p.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(buf.getvalue())
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    import os

    from pipeline.runner import JobConfig, run_job

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    work = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/aeflow-bench")
    shutil.rmtree(work, ignore_errors=True)
    src = work / "in"
    for i in range(n):
        save(src / f"{i:04d}.jpg", photo(256, 256, i), quality=90)
    ref = register(work / "store", "dncnn", dncnn(work / "dncnn.onnx", layers=8, width=32, name="dncnn"), "denoise")
    results: dict = {"images": n, "model": "DnCNN-like, 8 conv layers of 32 channels", "cpus": os.cpu_count()}
    variants = {"local_b8": dict(runner="local", batch_size=8), "local_b1": dict(runner="local", batch_size=1),
                "ray_w2_b8": dict(runner="ray", batch_size=8, workers=2),
                "ray_w1_b8": dict(runner="ray", batch_size=8, workers=1)}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    for r in range(rounds):  # interleaved, so a load change on a shared machine hits every variant alike
        t = plain_loop(src, work / "plain", str(ref.onnx_path()), os.cpu_count())
        results.setdefault("plain_loop", []).append({"img_s": round(t, 2)})
        for name, kw in variants.items():
            s = run_job(JobConfig(job="denoise", in_dir=src, out_dir=work / f"{name}-{r}", model="dncnn",
                                  store=work / "store", progress=False, **kw))
            results.setdefault(name, []).append({"img_s": s["images_per_s"], "img_s_running": s["images_per_s_running"],
                                                 "startup_s": s["startup_s"], "wall_s": s["wall_s"],
                                                 "ok": s["counts"]["ok"]})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
