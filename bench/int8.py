"""int8 vs fp32 ORT vs torch eager, shipped denoise/upscale-x2: `python -m bench.int8 --photos /tmp/heldout`."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

if __package__ in (None, ""):  # run as a script: make the checkout's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._quality_data import load_photos  # noqa: E402
from bench._quality_metrics import psnr, psnr_y  # noqa: E402
from models.data import bicubic_down  # noqa: E402
from models.quantize import _bias_correct, _reader, model_from_onnx  # noqa: E402
from models.quantize import crops as quantize_crops

SHIPPED = Path(__file__).resolve().parent.parent / "aeflow" / "shipped"
SIGMAS = (15, 25, 50)
MAX_LOSS_DB, MIN_SPEEDUP = 0.1, 1.5
# name -> recipe. ops: op_types_to_quantize (None: quantize_static's default, every op it knows, Clip/Mul included);
# keep: indices of Conv nodes left float (nodes_to_exclude); bc: bias correction (bias_correct).
BASE = dict(fmt="QDQ", per_channel=True, act="QUInt8", weight="QInt8", calib="MinMax", ops=None, keep=(), bc=False)
CR, PCT = dict(ops=["Conv", "Relu"]), dict(ops=["Conv", "Relu"], calib="Percentile", bc=True)
VARIANTS = {
    "denoise": {  # the last Conv predicts the noise that is subtracted from the input (residual learning)
        "int8-default": {}, "int8-conv-relu": CR, "int8-keep-last": dict(CR, keep=(-1,)),
        "int8-keep-last-entropy": dict(CR, keep=(-1,), calib="Entropy"),
        "int8-keep-last-pct": dict(CR, keep=(-1,), calib="Percentile"),
        "int8-keep-last-bc": dict(CR, keep=(-1,), bc=True),
        "int8-keep-last-pct-bc": dict(PCT, keep=(-1,)),
        "int8-keep-last-pct-bc-s8act": dict(PCT, keep=(-1,), act="QInt8"),
        "int8-pct-bc": PCT, "dynamic-s8": dict(fmt="dynamic"), "dynamic-u8": dict(fmt="dynamic", weight="QUInt8")},
    "upscale-x2": {  # Conv 0 is the fixed bicubic depthwise conv (the skip path), the last feeds DepthToSpace
        "int8-default": {}, "int8-conv-relu": CR, "int8-keep-bicubic": dict(CR, keep=(0,)),
        "int8-keep-bicubic-pct-bc": dict(PCT, keep=(0,)), "int8-keep-bicubic-last": dict(CR, keep=(0, -1)),
        "dynamic-s8": dict(fmt="dynamic")},
}
BEST = {"denoise": "int8-keep-last-pct-bc", "upscale-x2": "int8-keep-bicubic-pct-bc"}
TIMED = {"denoise": ["int8-default", "int8-pct-bc", "int8-keep-last-pct-bc", "int8-keep-last-pct-bc-s8act",
                     "dynamic-s8"],
         "upscale-x2": ["int8-default", "int8-keep-bicubic-pct-bc", "int8-keep-bicubic-last", "dynamic-s8"]}


def loadavg() -> str:
    """The first three fields of /proc/loadavg."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def calibration(job: str, seed: int, n: int = 12, batch: int = 4) -> list[np.ndarray]:
    """uint8 NHWC batches from TRAIN_PHOTOS only: 128² crops + noise σ 15/25/50 (denoise), 256² crops / 2 (upscale).

    The same crops as the shipped recipe (models.quantize.crops), so the study and the export agree.
    """
    xs = [x for x, _ in quantize_crops("denoise" if job == "denoise" else "upscale", 1 if job == "denoise" else 2,
                                       seed, n=n)]
    return [np.stack(xs[i:i + batch]) for i in range(0, n, batch)]


def torch_model(job: str, onnx_path: Path):
    """The shipped architecture in torch eager with the ONNX file's weights (the bench's naive path)."""
    return model_from_onnx(json.loads((onnx_path.parent / "card.json").read_text()), onnx_path)


def torch_run(model, x: np.ndarray) -> np.ndarray:
    """bench/_modes.py run_naive's inference step: uint8 NHWC -> float -> model -> uint8 NHWC."""
    with torch.inference_mode():
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)
        return model(t).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def bias_correct(src: Path, qpath: Path, model, calib: list[np.ndarray], out: Path) -> list[str]:
    """Bias correction as the export applies it (models.quantize._bias_correct, Nagel et al. 2019)."""
    return _bias_correct(model, src, qpath, calib, out)


def quantize(src: Path, out: Path, recipe: dict, calib: list[np.ndarray], model) -> dict:
    """Quantize `src` to `out` with a VARIANTS recipe; returns the exact quantize_* arguments used."""
    r = dict(BASE, **recipe)
    if r["fmt"] == "dynamic":
        quantize_dynamic(str(src), str(out), weight_type=QuantType[r["weight"]], per_channel=r["per_channel"])
        return {"call": "quantize_dynamic", "weight_type": r["weight"], "per_channel": r["per_channel"]}
    convs = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv"]
    kw = dict(quant_format=QuantFormat[r["fmt"]], per_channel=r["per_channel"], activation_type=QuantType[r["act"]],
              weight_type=QuantType[r["weight"]], calibrate_method=CalibrationMethod[r["calib"]],
              op_types_to_quantize=r["ops"], nodes_to_exclude=[convs[k] for k in r["keep"]],
              extra_options={"CalibPercentile": 99.999} if r["calib"] == "Percentile" else {})
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
        quantize_static(str(src), str(out), _reader(calib), **kw)
        args = {"call": "quantize_static", **kw}
        if r["bc"]:  # quantize once to learn the int8 weights, correct the float biases, quantize again
            args["bias_corrected"] = bias_correct(src, out, model, calib, out.with_suffix(".bc.onnx"))
            quantize_static(str(out.with_suffix(".bc.onnx")), str(out), _reader(calib), **kw)
    return args


def test_set(job: str, photos: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{label: (uint8 inputs, references)}: held-out crops + Gaussian noise as bench/_quality_tasks.py adds it
    (rng [seed, σ], photos in name order), or the crops bicubic-downscaled by 2 (upscale)."""
    clean = np.stack([a for _, a in load_photos(photos)])
    if job != "denoise":
        return {"x2": (bicubic_down(clean, 2), clean)}
    out = {}
    for s in SIGMAS:
        rng = np.random.default_rng([seed, s])
        noisy = [np.clip(np.rint(c.astype(np.float64) + rng.standard_normal(c.shape) * s), 0, 255) for c in clean]
        out[f"sigma{s}"] = (np.stack(noisy).astype(np.uint8), clean)
    return out


def score(job: str, run, tests: dict) -> dict[str, float]:
    """Mean PSNR per test label: RGB PSNR vs clean (denoise), Y-PSNR with a 2-pixel border (upscale)."""
    res = {}
    for label, (x, ref) in tests.items():
        y = np.concatenate([run(x[i:i + 4]) for i in range(0, len(x), 4)])
        res[label] = float(np.mean([psnr(r, o) if job == "denoise" else psnr_y(r, o, 2) for r, o in zip(ref, y)]))
    return res


def session(path: Path, threads: int, level: str | None = None, spin: bool = True):
    """An onnxruntime CPU session opened as pipeline.predictor.Predictor opens it, plus optional levers."""
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    if level:
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda x: s.run(None, {"image": x})[0]


def pre_process_check(src: Path, x: np.ndarray, work: Path) -> dict:
    """Does quant_pre_process run on the graph, and change its outputs? (The recipes quantize the raw graph.)"""
    out, res = work / f"{src.parent.parent.name}-pre.onnx", {"used_by_recipes": False}
    with contextlib.chdir(work):  # a failed symbolic shape inference leaves temp files in the working directory
        try:
            quant_pre_process(str(src), str(out))
        except Exception as exc:  # noqa: BLE001 - recorded: symbolic shape inference gives up on some graphs
            res.update(default_error=f"{type(exc).__name__}: {exc}", ran_with="skip_symbolic_shape=True")
            quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return {**res, "max_uint8_diff": int(np.abs(session(src, 2)(x).astype(int) - session(out, 2)(x)).max())}


def quality(job: str, src: Path, model, photos: Path, work: Path, seeds=(0, 1, 2)) -> tuple[dict, dict]:
    """Quantize every VARIANTS recipe, PSNR of each vs fp32; the BEST recipe again on other calibration seeds."""
    tests, calib = test_set(job, photos), calibration(job, seeds[0])
    paths, res = {"fp32": src}, {"fp32": {"psnr": score(job, session(src, 2), tests)},
                                 "torch-eager": {"psnr": score(job, lambda x: torch_run(model, x), tests)}}
    for name, recipe in VARIANTS[job].items():
        paths[name], t0 = work / f"{job}-{name}.onnx", time.perf_counter()
        res[name] = {"settings": quantize(src, paths[name], recipe, calib, model)}
        res[name]["quantize_s"] = round(time.perf_counter() - t0, 1)
        res[name]["psnr"] = score(job, session(paths[name], 2), tests)
        print(f"{job} {name}: {res[name]['psnr']}", flush=True)
    for seed in seeds[1:]:  # the best recipe calibrated on other random training crops
        quantize(src, work / "seed.onnx", VARIANTS[job][BEST[job]], calibration(job, seed), model)
        res[f"{BEST[job]}-calib-seed{seed}"] = {"psnr": score(job, session(work / "seed.onnx", 2), tests)}
    for r in res.values():
        r["delta_db"] = {k: v - res["fp32"]["psnr"][k] for k, v in r["psnr"].items()}
    return res, paths


def speed(job: str, src: Path, paths: dict, model, x8: np.ndarray, repeats: int, res: dict) -> dict:
    """ms/image of fp32 session levers, int8 graphs and torch eager, interleaved, threads 2/1 x batch 8/1."""
    load = {}
    for threads in (2, 1):
        torch.set_num_threads(threads)
        runs = {"fp32": session(src, threads), "fp32-opt-all": session(src, threads, "ORT_ENABLE_ALL"),
                "fp32-opt-extended": session(src, threads, "ORT_ENABLE_EXTENDED"),
                "fp32-nospin": session(src, threads, spin=False),
                **{k: session(paths[k], threads) for k in TIMED[job]},
                f"{BEST[job]}-nospin": session(paths[BEST[job]], threads, spin=False),
                "torch-eager": lambda x: torch_run(model, x)}
        for batch in (8, 1):
            key, la, times = f"t{threads}_b{batch}", loadavg(), {k: [] for k in runs}
            for rnd in range(repeats + 1):  # round 0 warms up; every round runs each variant once, in turn
                for k, f in runs.items():
                    t0 = time.perf_counter()
                    f(x8[:batch])
                    times[k] += [time.perf_counter() - t0] if rnd else []
            best, load[key] = {k: min(v) / batch * 1000 for k, v in times.items()}, [la, loadavg()]
            for k, ms in best.items():
                r = res.setdefault(k, {"psnr_same_as": BEST[job] if k.startswith(BEST[job]) else "fp32"})
                r.setdefault("ms_per_image", {})[key] = round(ms, 2)
                r.setdefault("all_ms_per_image", {})[key] = [round(t / batch * 1000, 2) for t in times[k]]
                r.setdefault("speedup_vs_fp32", {})[key] = round(best["fp32"] / ms, 3)
                r.setdefault("speedup_vs_torch_eager", {})[key] = round(best["torch-eager"] / ms, 3)
            print(f"{job} {key}: " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()), flush=True)
    for r in res.values():
        if "ms_per_image" in r:
            d = r.get("delta_db") or res[r["psnr_same_as"]]["delta_db"]
            r["meets_target_t2_b8"] = r["speedup_vs_fp32"]["t2_b8"] >= MIN_SPEEDUP and min(d.values()) > -MAX_LOSS_DB
    return load


def bench_model(job: str, photos: Path, work: Path, repeats: int) -> dict:
    """Quality, then speed, of one shipped model; speed inputs are 256² crops (upscale writes 512²)."""
    src = SHIPPED / job / "1" / "model.onnx"
    model = torch_model(job, src)
    res, paths = quality(job, src, model, photos, work)
    x8 = (test_set(job, photos)["sigma25"][0] if job == "denoise"
          else np.stack([a for _, a in load_photos(photos)]))[:8]
    return {"source": str(src.relative_to(SHIPPED.parent.parent)), "best": BEST[job],
            "quant_pre_process": pre_process_check(src, x8[:2], work),
            "speed_input": f"uint8 NHWC {x8.shape[1]}x{x8.shape[2]}" + (" noisy sigma 25" if job == "denoise" else ""),
            "torch_eager": "create_model(shipped kind/size) with the ONNX file's weights, bench/_modes.py naive step",
            "loadavg": speed(job, src, paths, model, x8, repeats, res), "variants": res}


def main(argv=None) -> dict:
    """Run both models and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--photos", type=Path, default=Path("/tmp/heldout"),
                    help="held-out crops (python -m bench.quality --make-photos DIR)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "int8.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jobs", default="denoise,upscale-x2")
    a = ap.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic logs every value_info it cannot infer
    info = Path("/proc/cpuinfo").read_text()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    res = {"command": " ".join([".venv/bin/python", "-m", "bench.int8", *(argv or sys.argv[1:])]),
           "machine": {"nproc": os.cpu_count(), "cpu": cpu, "avx512_vnni": "avx512_vnni" in info,
                       "loadavg_start": loadavg()},
           "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__,
                        "python": platform.python_version()},
           "target": f"int8 >= {MIN_SPEEDUP}x fp32 ORT (threads 2, batch 8) with every PSNR loss < {MAX_LOSS_DB} dB",
           "timing": f"best of {a.repeats} interleaved rounds, ms per image; keys t<intra_op threads>_b<batch>",
           "models": {}}
    with tempfile.TemporaryDirectory() as work:
        for job in a.jobs.split(","):
            res["models"][job] = bench_model(job, a.photos, Path(work), a.repeats)
    res["machine"]["loadavg_end"] = loadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=lambda v: getattr(v, "name", str(v))) + "\n")
    print(f"wrote {a.out}")
    return res


if __name__ == "__main__":
    main()
