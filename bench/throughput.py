"""Batch-job throughput: naive torch loop vs a tight onnxruntime floor vs the aeflow CLI, per job and image size.

    .venv/bin/python bench/throughput.py --n 2000 --sizes 512,256 --out bench-results.json
    .venv/bin/python bench/throughput.py --quick --out /tmp/quick.json      # smoke run, seconds
    .venv/bin/python bench/throughput.py --device cuda --sizes 256 --model-only   # on a GPU machine

See bench/README.md for what each mode measures and docs/benchmarks.md for results.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` (and the checkout's packages) importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import markdown  # noqa: E402

JOBS = ("denoise", "upscale", "embed")
MODES = ("naive", "floor", "aeflow-local", "aeflow")
DEVICES = ("cpu", "cuda")
# The throughput targets the report checks against (the bench never tunes the pipeline).
TARGETS = {"c_over_b_min": 0.85, "c_over_a_min": 1.5, "rss_10n_over_n_max": 1.2, "scaling_min": 1.8}


@dataclass
class BenchConfig:
    """Everything one benchmark run does; see --help."""

    n: int = 2000
    sizes: tuple[int, ...] = (512, 256)
    jobs: tuple[str, ...] = JOBS
    modes: tuple[str, ...] = MODES
    work: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "aeflow-bench")
    store: Path | None = None  # None: untrained default-size models exported into a temp store
    shipped: bool = False  # the shipped models (an empty store resolves to them)
    device: str = "cpu"
    naive_batch: int = 16
    # None: the job's default --batch-size (pipeline.defaults), so (b) and (c) batch alike
    floor_batch: int | None = None
    rss_n: int | None = None  # files of the N run of the memory check (default: n)
    rss_size: int = 64  # the memory check's image size (small: 10N files must stay quick)
    rss_factor: int = 10
    memory: bool = True  # the N vs 10N peak-RSS check
    model_only: bool = False
    model_only_batch: int = 16
    model_only_repeats: int = 5
    scaling: bool = False
    scaling_n: int = 200
    scaling_size: int = 256
    scaling_rounds: int = 2  # 1-node and 2-node runs alternate this many times
    scaling_pin: bool = True  # split the machine's cores between the two nodes (bench._cluster.scaling)
    out: Path | None = None
    keep_outputs: bool = False


def quick(cfg: BenchConfig) -> BenchConfig:
    """The smoke-test settings: a handful of tiny images, every mode and section still runs."""
    return replace(cfg, n=6, sizes=(32,), rss_n=4, rss_size=32, model_only=True, model_only_batch=2,
                   model_only_repeats=1, scaling_n=8, scaling_size=32)


def resolve_device(requested: str) -> tuple[str, str | None]:
    """('cuda' or 'cpu', a note when CUDA was asked for but torch or onnxruntime cannot use it here)."""
    if requested == "cpu":
        return "cpu", None
    import onnxruntime as ort
    import torch

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - reported through the provider list below
            pass
    torch_ok, providers = torch.cuda.is_available(), ort.get_available_providers()
    if torch_ok and "CUDAExecutionProvider" in providers:
        return "cuda", None
    note = (f"--device cuda was asked for, but this machine cannot run it (torch.cuda.is_available()={torch_ok}, "
            f"onnxruntime providers: {', '.join(providers)}): every mode runs on the CPU instead")
    print(f"WARNING: {note}", file=sys.stderr)
    return "cpu", note


def _say(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run_mode(mode: str, bm, in_dir: Path, out_dir: Path, cfg: BenchConfig, device: str, threads: int) -> dict:
    from bench import _instrument, _modes

    if mode == "naive":
        return _modes.run_naive(bm, in_dir, out_dir, device, threads, cfg.naive_batch)
    if mode == "floor":
        from pipeline.defaults import DEFAULT_BATCH_SIZE

        return _modes.run_floor(bm, in_dir, out_dir, device, threads, cfg.floor_batch or DEFAULT_BATCH_SIZE[bm.job])
    if mode == "aeflow-local":
        return _instrument.run_aeflow_local(bm, in_dir, out_dir, device)
    return _modes.run_cli(bm, in_dir, out_dir, device)


def _sig(x: float) -> float:
    """Three significant digits: a tiny ratio (a 6-file smoke run against a fast floor) must not round to 0."""
    return float(f"{x:.3g}")


def _ratios(row: dict) -> None:
    m = row["modes"]
    c = m.get("aeflow", {}).get("images_per_s")
    for key, other in (("c_over_a", "naive"), ("c_over_b", "floor")):
        o = m.get(other, {}).get("images_per_s")
        row[key] = _sig(c / o) if c and o else None
        p = m.get("aeflow", {}).get("process_images_per_s")
        row[key + "_process"] = _sig(p / o) if p and o else None
    st, b = m.get("aeflow", {}).get("steady_images_per_s"), m.get("floor", {}).get("images_per_s")
    row["c_over_b_steady"] = _sig(st / b) if st and b else None
    fl, local = m.get("floor", {}), m.get("aeflow-local", {}).get("images_per_s")
    row["local_over_b"] = _sig(local / fl["images_per_s"]) if local and fl.get("images_per_s") else None
    if fl.get("stages_s"):  # what reading + decoding alone would allow: the ceiling of any job on these files
        s = fl["stages_s"]
        t = s["list"] + s["read"] + s["decode"]
        row["decode_only_images_per_s"] = round(fl["images"] / t, 2) if t else None


def run(cfg: BenchConfig) -> dict:
    """Run every section, return the report dict (also written to cfg.out as JSON)."""
    from bench._models import stored_models, untrained_models
    from bench._photos import make_photos, replicate
    from bench._proc import machine

    threads = os.cpu_count() or 1
    device, note = resolve_device(cfg.device)
    cfg.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=cfg.work))
    report: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                    "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                    "argv": sys.argv, "device": device, "device_note": note, "targets": TARGETS, "results": []}
    t_start = time.perf_counter()
    try:
        what = ("shipped" if cfg.shipped else f"store {cfg.store}" if cfg.store
                else "untrained, exported to a temp store")
        _say(f"models ({what})")
        if cfg.shipped or cfg.store:
            models = stored_models(list(cfg.jobs), cfg.store or (scratch / "empty-store"))
        else:
            models = untrained_models(list(cfg.jobs), scratch / "store")
        report["models"] = {j: {"spec": m.spec, "onnx": str(m.onnx), "trained": m.trained, "precision": m.precision,
                                "kind": getattr(m.torch, "kind", None), "config": asdict(m.torch.cfg)}
                            for j, m in models.items()}
        for size in cfg.sizes:
            photos = make_photos(cfg.work, cfg.n, size)
            for job in cfg.jobs:
                row = {"job": job, "size": size, "n": cfg.n, "modes": {}}
                for mode in cfg.modes:
                    _say(f"{job} {size}px N={cfg.n}: {mode}")
                    out_dir = scratch / f"out-{job}-{size}-{mode}"
                    row["modes"][mode] = _run_mode(mode, models[job], photos, out_dir, cfg, device, threads)
                    _say(f"  {row['modes'][mode]['images_per_s']} img/s")
                    if not cfg.keep_outputs:
                        shutil.rmtree(out_dir, ignore_errors=True)
                _ratios(row)
                report["results"].append(row)
                _checkpoint(cfg, report)
        if cfg.memory:
            report["memory"] = _memory(cfg, models, scratch, device, make_photos, replicate)
            _checkpoint(cfg, report)
        if cfg.model_only:
            from bench._model_only import model_only

            report["model_only"] = [model_only(models[j], s, device, threads, cfg.model_only_batch,
                                               cfg.model_only_repeats) for s in cfg.sizes for j in cfg.jobs]
        if cfg.scaling:
            from bench._cluster import scaling

            job = "denoise" if "denoise" in models else cfg.jobs[0]
            _say(f"scaling: {job} on 1 node x 1 CPU vs 2 nodes x 1 CPU")
            photos = make_photos(cfg.work, cfg.scaling_n, cfg.scaling_size)
            logs = cfg.work / "logs"  # outside the scratch folder: kept for a post-mortem
            logs.mkdir(exist_ok=True)
            try:
                report["scaling"] = scaling(models[job], photos, cfg.scaling_size, scratch, logs,
                                            cfg.scaling_rounds, cfg.scaling_pin)
            except RuntimeError as exc:  # an optional section: record why, keep the rest of the report
                _say(f"scaling failed: {exc}")
                report["scaling_error"] = str(exc)
    finally:
        if not cfg.keep_outputs:
            shutil.rmtree(scratch, ignore_errors=True)
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def _checkpoint(cfg: BenchConfig, report: dict) -> None:
    """Write what is measured so far (a later section that fails or is interrupted loses nothing)."""
    if cfg.out:
        write_json(cfg.out, report)


def _memory(cfg: BenchConfig, models: dict, scratch: Path, device: str, make_photos, replicate) -> dict:
    """Peak RSS of the aeflow CLI's process tree on N files and on the same files listed rss_factor times."""
    from bench._modes import run_cli

    job = "denoise" if "denoise" in models else cfg.jobs[0]
    base = make_photos(cfg.work, cfg.rss_n or cfg.n, cfg.rss_size)
    big = replicate(base, cfg.rss_factor)
    out = {"job": job, "size": cfg.rss_size, "how": "sum of VmRSS (and RssAnon) over the CLI process and all its "
           "descendants (Ray gcs_server, raylet, workers), read from /proc every 0.2 s; peak over the run"}
    for key, folder in (("n", base), ("10n", big)):
        _say(f"memory: {job} {cfg.rss_size}px on {folder.name}")
        # --runner ray at both sizes: the Ray engine's memory (the default keeps one machine's job in-process)
        r = run_cli(models[job], folder, scratch / f"out-mem-{key}", device, extra=("--runner", "ray"),
                    label=f"aeflow-{key}")
        out[key] = r
        shutil.rmtree(scratch / f"out-mem-{key}", ignore_errors=True)
    out["rss_ratio"] = round(out["10n"]["peak_rss_mib"] / out["n"]["peak_rss_mib"], 3)
    out["anon_ratio"] = round(out["10n"]["peak_anon_mib"] / out["n"]["peak_anon_mib"], 3)
    return out


def _csv_ints(s: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals or min(vals) < 8:
        raise argparse.ArgumentTypeError(f"sizes must be >= 8, got {s!r}")
    return vals


def _csv_choice(choices: tuple[str, ...]):
    def parse(s: str) -> tuple[str, ...]:
        vals = tuple(v.strip() for v in s.split(",") if v.strip())
        bad = [v for v in vals if v not in choices]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"unknown {bad or s!r}; choose from {', '.join(choices)}")
        return vals
    return parse


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    """BenchConfig from the command line."""
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=d.n, help="photos per size (default %(default)s)")
    p.add_argument("--sizes", type=_csv_ints, default=d.sizes, help="square sizes, e.g. 512,256")
    p.add_argument("--jobs", type=_csv_choice(JOBS), default=d.jobs, help=f"subset of {','.join(JOBS)}")
    p.add_argument("--modes", type=_csv_choice(MODES), default=d.modes, help=f"subset of {','.join(MODES)}")
    p.add_argument("--work", type=Path, default=d.work, help="cache of generated photos (default %(default)s)")
    p.add_argument("--store", type=Path, default=None, help="use the trained models of this store")
    p.add_argument("--shipped", action="store_true",
                   help="use the models shipped in aeflow/shipped (int8 graph where one ships, as the CLI on CPU)")
    p.add_argument("--device", choices=DEVICES, default=d.device,
                   help="cuda: torch, onnxruntime and the job on the GPU (falls back to CPU with a message)")
    p.add_argument("--naive-batch", type=int, default=d.naive_batch)
    p.add_argument("--floor-batch", type=int, default=d.floor_batch)
    p.add_argument("--rss-n", type=int, default=None, help="files of the memory check's N run (default --n)")
    p.add_argument("--rss-size", type=int, default=d.rss_size)
    p.add_argument("--rss-factor", type=int, default=d.rss_factor)
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=d.memory,
                   help="the peak-RSS check of the CLI on N and on 10N files (default on)")
    p.add_argument("--model-only", action="store_true", help="also time the bare models on in-memory batches")
    p.add_argument("--model-only-batch", type=int, default=d.model_only_batch)
    p.add_argument("--scaling", action="store_true", help="also run 1 node x 1 CPU vs 2 local nodes x 1 CPU")
    p.add_argument("--scaling-n", type=int, default=d.scaling_n)
    p.add_argument("--scaling-rounds", type=int, default=d.scaling_rounds,
                   help="1-node and 2-node runs alternate this many times (default %(default)s)")
    p.add_argument("--scaling-pin", action=argparse.BooleanOptionalAction, default=d.scaling_pin,
                   help="split the cores between the nodes, as two machines would be (default on)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--keep-outputs", action="store_true", help="keep every mode's output folder")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny images, every section")
    a = p.parse_args(argv)
    cfg = BenchConfig(n=a.n, sizes=a.sizes, jobs=a.jobs, modes=a.modes, work=a.work, store=a.store, device=a.device,
                      naive_batch=a.naive_batch, floor_batch=a.floor_batch, rss_n=a.rss_n, rss_size=a.rss_size,
                      rss_factor=a.rss_factor, memory=a.memory, model_only=a.model_only,
                      model_only_batch=a.model_only_batch,
                      scaling=a.scaling, scaling_n=a.scaling_n, scaling_rounds=a.scaling_rounds,
                      scaling_pin=a.scaling_pin, out=a.out, keep_outputs=a.keep_outputs,
                      shipped=a.shipped)
    if min(cfg.n, cfg.rss_n or cfg.n, cfg.naive_batch, cfg.floor_batch or 1, cfg.rss_factor,
           cfg.scaling_rounds) < 1:
        p.error("--n, --rss-n, batches, --rss-factor and --scaling-rounds must be >= 1")
    return quick(cfg) if a.quick else cfg


def write_json(path: Path, report: dict) -> None:
    """Write the report atomically (temp name in the same folder, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    cfg = parse_args(argv)
    report = run(cfg)
    print(markdown(report))
    if cfg.out:
        write_json(cfg.out, report)
        _say(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
