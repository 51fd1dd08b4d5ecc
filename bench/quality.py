"""Model quality: the store's denoise, upscale and ae models against classic baselines on a folder of photos.

    .venv/bin/python -m bench.quality --make-photos /tmp/heldout            # the 12 held-out 256x256 photos
    .venv/bin/python -m bench.quality --make-photos /tmp/crops --from PHOTOS/heldout   # or the Debian hold-out
    .venv/bin/python -m bench.quality /tmp/heldout --store DIR --pictures /tmp/pics
    .venv/bin/python -m bench.quality /tmp/crops --only denoise,upscale --denoise-previous denoise-v1 \
        --upscale-previous upscale-x2-v1,upscale-x4-v1 --speed-mp 4
    .venv/bin/python -m bench.quality /tmp/heldout --only embed --embed-model ae:3

Writes OUT/quality.json (everything) and OUT/quality.md (the tables docs/quality.md pastes). See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` (and the checkout's packages) importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TASKS = ("denoise", "upscale", "embed")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class QualityConfig:
    """One quality run; see --help."""

    photos: Path | None = None
    out: Path = RESULTS
    store: Path | None = None  # None: as the jobs do, $AEFLOW_HOME or ./aeflow-store
    denoise_model: str = "denoise"
    upscale_models: tuple[str, ...] = ("upscale-x2", "upscale-x4")
    embed_model: str = "ae"
    sigmas: tuple[int, ...] = (15, 25, 50)
    runner: str = "local"
    only: tuple[str, ...] = TASKS
    pictures: Path | None = None
    seed: int = 0
    embed_limit: int | None = None  # digits per embedding set (smoke runs); None: all of them
    denoise_previous: tuple[str, ...] = ()  # earlier denoisers to compare on the same inputs
    upscale_previous: tuple[str, ...] = ()  # earlier upscalers, matched to a scale by their own
    speed_mp: float | None = None  # also time the models on one photo enlarged to this many output megapixels
    fp32_too: bool = False  # also run each model's fp32 graph (on CPU the jobs default to int8 where one ships)


def _say(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def resolve_model(spec: str, store: Path) -> dict:
    """What the jobs will load for `spec` (user store first, then shipped models), or why it is missing."""
    from aeflow.store import ModelStore, StoreError
    from pipeline.runner import read_model_info

    try:
        ref = ModelStore(store).resolve(spec)
        info = read_model_info(ref.onnx_path())  # onnx_path() checks the sha256 as the job will
    except (StoreError, OSError, ValueError) as exc:
        return {"spec": spec, "status": "missing", "error": str(exc)}
    data = ref.card.get("data") or {}
    trained_on = data.get("spec")
    if info.role == "encoder":
        trained_on = f"{trained_on or '?'} at {info.input_size}x{info.input_size}x{info.channels}"
    return {"spec": spec, "status": "ok", "id": ref.id, "sha256": ref.sha256, "path": str(ref.path),
            "kind": info.kind, "role": info.role, "scale": info.scale, "input_size": info.input_size,
            "channels": info.channels, "trained_on": trained_on, "card_data": data,
            "card_metrics": ref.card.get("metrics")}


def _upscale_slots(specs: tuple[str, ...], store: Path) -> tuple[dict[int, dict], list[str]]:
    """scale -> model entry, by the model's own scale (or the name's -xN when it cannot be resolved)."""
    from bench._quality_tasks import SCALES

    slots, notes = {}, []
    for spec in specs:
        m = resolve_model(spec, store)
        guess = re.search(r"x(\d+)$", spec.split(":")[0])
        scale = m["scale"] if m["status"] == "ok" else (int(guess.group(1)) if guess else None)
        if scale not in SCALES:
            notes.append(f"upscale model `{spec}` ignored: scale {scale} is not one of {SCALES}")
        else:
            slots.setdefault(scale, m)
    return slots, notes


def _model_notes(models: dict) -> list[str]:
    """Caveats read off the model cards: held-out photos in the training data, an ae not trained on digits."""
    from models.data import HELDOUT_PHOTOS

    notes = []
    for role, m in models.items():
        if m["status"] != "ok":
            continue
        d = m["card_data"]
        val = set((d.get("split") or {}).get("validation") or [])
        seen = [h for h in HELDOUT_PHOTOS if f"skimage:{h}" in (d.get("description") or "")
                and f"skimage:{h}" not in val]
        if seen:
            notes.append(f"**{m['id']}'s card lists held-out photo(s) {', '.join(seen)} in its training data**: "
                         "its numbers on crops of those photos are not held-out.")
        if role == "embed" and (m["input_size"] != 28 or m["channels"] != 1 or d.get("spec") != "builtin:mnist"):
            notes.append(f"**{m['id']} was not trained on 28x28 grey MNIST digits** (card: {m['trained_on']}): "
                         "it still runs, the embed job resizing the digits to its input.")
    return notes


NOTES = [
    "NLM is OpenCV's `fastNlMeansDenoisingColored(img, None, h, h, 7, 21)` with h picked per σ from "
    "σ·{0.5, 0.6, 0.7, 0.8, 1.0} by the best mean PSNR on these very photos: an oracle choice, favourable to NLM "
    "(every h is in the JSON). The wavelet denoiser (scikit-image, BayesShrink, soft, YCbCr) is given the true σ.",
    "Noise: zero-mean Gaussian on 0–255, clipped, rounded and stored as uint8 PNG (as a real noisy file); "
    "upscale inputs are models.data.bicubic_down (Pillow bicubic, antialiased: the training degradation).",
    "s/MP: baselines time the call itself (per image, summed); models time the whole `aeflow` subprocess "
    "(process start, imports, model load included), and in brackets the job's own wall time after its start-up "
    "from OUT/_aeflow/summary.json (read, decode, inference, encode, write: the job records no inference-only "
    "time). Upscaling is per output megapixel; embeddings per input megapixel (28x28 digits), PCA's transform only.",
    "Embeddings: PCA at the ae's dimension is fitted on the MNIST training split (what the shipped ae trains "
    "on; the mnist rows are its held-out validation split); "
    "both read the same 28x28 PNGs the job embeds; raw pixels (784-d) are a reference.",
]


def run(cfg: QualityConfig) -> dict:
    """Run the selected evaluations and return the report (also written to cfg.out)."""
    from aeflow.store import default_root
    from bench import _quality_report, _quality_tasks
    from bench._proc import machine
    from bench._quality_data import load_photos

    t_start = time.perf_counter()
    store = Path(cfg.store) if cfg.store else default_root()
    report: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                    "argv": sys.argv, "config": {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in asdict(cfg).items()},
                    "store": str(store), "models": {}, "notes": list(NOTES)}
    photos = load_photos(cfg.photos) if {"denoise", "upscale"} & set(cfg.only) else []
    report["photos"] = {"dir": str(cfg.photos), "count": len(photos), "names": [n for n, _ in photos],
                        "megapixels": sum(a.shape[0] * a.shape[1] for _, a in photos) / 1e6}
    _say(f"{len(photos)} photos; models from {store}")
    work = Path(tempfile.mkdtemp(prefix="aeflow-quality-"))
    pics: dict = {}
    try:
        if "denoise" in cfg.only:
            m = report["models"]["denoise"] = resolve_model(cfg.denoise_model, store)
            previous = tuple(resolve_model(p, store) for p in cfg.denoise_previous)
            for k, p in enumerate(previous):
                report["models"][f"denoise (previous {k + 1})"] = p
            report["denoise"], pics["denoise"] = _quality_tasks.denoise(photos, cfg.sigmas, m, store, cfg.runner,
                                                                        work, cfg.seed, _say, previous,
                                                                        cfg.fp32_too)
        if "upscale" in cfg.only:
            slots, notes = _upscale_slots(cfg.upscale_models, store)
            report["notes"] += notes
            for s in _quality_tasks.SCALES:
                report["models"][f"upscale x{s}"] = slots.get(
                    s, {"spec": f"upscale-x{s}", "status": "missing", "error": f"no x{s} model among --upscale-models"})
            previous: dict[int, list[dict]] = {}
            for p in cfg.upscale_previous:
                m = resolve_model(p, store)
                if m["status"] == "ok" and m["scale"] in _quality_tasks.SCALES:
                    previous.setdefault(m["scale"], []).append(m)
                    report["models"][f"upscale x{m['scale']} (previous)"] = m
                else:
                    report["notes"].append(f"previous upscale model `{p}` ignored: {m.get('error') or 'no scale'}")
            report["upscale"], pics["upscale"] = _quality_tasks.upscale(photos, slots, store, cfg.runner, work, _say,
                                                                        previous, cfg.fp32_too)
        if "embed" in cfg.only:
            m = report["models"]["embed"] = resolve_model(cfg.embed_model, store)
            report["embed"] = _quality_tasks.embed(m, store, cfg.runner, work, cfg.seed, _say, cfg.embed_limit)
        if cfg.speed_mp and photos:
            jobs = [("denoise", report["models"].get("denoise") or resolve_model(cfg.denoise_model, store), 1)]
            jobs += [("upscale", report["models"].get(f"upscale x{s}")
                      or {"spec": f"upscale-x{s}", "status": "missing"}, s) for s in _quality_tasks.SCALES]
            largest = max(photos, key=lambda t: t[1].shape[0] * t[1].shape[1])[1]
            report["speed"] = _quality_tasks.speed(largest, jobs, store, cfg.runner, work, _say, cfg.speed_mp)
        report["notes"] += _model_notes(report["models"]) + [
            f"NLM's best h at σ={k} ({e['nlm_best_h']}) is at the edge of its grid: a wider grid might do better."
            for k, e in (report.get("denoise") or {}).items() if e["nlm_best_at_grid_edge"]]
        if cfg.pictures:
            report["pictures"] = _quality_report.pictures(cfg.pictures, pics.get("denoise", {}),
                                                          pics.get("upscale", {}))
            _say(f"pictures in {cfg.pictures}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def finite(obj):
    """The report with inf/NaN floats as None (strict JSON); the markdown shows them as ∞ or –."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def failed_models(report: dict) -> list[str]:
    """'task key: error' for every model run that failed (not merely missing)."""
    out = []
    for task in TASKS:
        for key, e in (report.get(task) or {}).items():
            for m in e["methods"].values():
                if isinstance(m, dict) and m.get("status") == "error":
                    out.append(f"{task} {key}: {m['error']}")
    return out


def _csv(kind, choices: tuple[str, ...] | None = None):
    def parse(s: str):
        try:
            vals = tuple(kind(v.strip()) for v in s.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad list {s!r}") from None
        bad = [v for v in vals if choices and v not in choices]
        if not vals or bad:
            hint = f"; choose from {','.join(choices)}" if choices else ""
            raise argparse.ArgumentTypeError(f"bad list {s!r}{hint}")
        return vals
    return parse


def parse_args(argv: list[str] | None = None) -> tuple[QualityConfig, tuple[Path | None, Path | None]]:
    """(QualityConfig, (the --make-photos folder or None, its --from source or None)) from the command line."""
    d = QualityConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("photos", metavar="PHOTOS_DIR", type=Path, nargs="?", help="folder of clean photos")
    p.add_argument("--out", type=Path, default=d.out,
                   help="folder for quality.json and quality.md (default bench/results)")
    p.add_argument("--store", type=Path, default=None, help="model store (default $AEFLOW_HOME or ./aeflow-store)")
    p.add_argument("--denoise-model", default=d.denoise_model)
    p.add_argument("--upscale-models", type=_csv(str), default=d.upscale_models, help="comma-separated specs")
    p.add_argument("--embed-model", default=d.embed_model)
    p.add_argument("--sigmas", type=_csv(int), default=d.sigmas, help="noise levels on 0–255 (default 15,25,50)")
    p.add_argument("--runner", choices=("local", "ray"), default=d.runner, help="the jobs' --runner (default local)")
    p.add_argument("--only", type=_csv(str, TASKS), default=d.only, help=f"subset of {','.join(TASKS)}")
    p.add_argument("--pictures", type=Path, default=None, help="also save before/after comparison strips here")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--embed-limit", type=int, default=None, help="digits per embedding set (smoke runs; default all)")
    p.add_argument("--denoise-previous", type=_csv(str), default=(), help="earlier denoisers to compare (specs)")
    p.add_argument("--upscale-previous", type=_csv(str), default=(), help="earlier upscalers to compare (specs)")
    p.add_argument("--fp32-too", action="store_true",
                   help="also run each model's fp32 graph beside the default one (int8 on CPU where it ships)")
    p.add_argument("--speed-mp", type=float, default=None,
                   help="also time the models on one photo enlarged to this many output megapixels")
    p.add_argument("--make-photos", type=Path, default=None, metavar="DIR",
                   help="write the 12 held-out 256x256 photos to DIR and exit")
    p.add_argument("--from", dest="make_from", type=Path, default=None, metavar="PHOTOS",
                   help="with --make-photos: a 256x256 centre crop of every photo under PHOTOS instead")
    a = p.parse_args(argv)
    if a.make_photos is None and a.photos is None and {"denoise", "upscale"} & set(a.only):
        p.error("PHOTOS_DIR is required for denoise and upscale (make one with --make-photos DIR)")
    if min(a.sigmas) < 1 or (a.embed_limit is not None and a.embed_limit < 20):
        p.error("--sigmas must be >= 1 and --embed-limit >= 20")
    cfg = QualityConfig(photos=a.photos, out=a.out, store=a.store, denoise_model=a.denoise_model,
                        upscale_models=a.upscale_models, embed_model=a.embed_model, sigmas=a.sigmas,
                        runner=a.runner, only=a.only, pictures=a.pictures, seed=a.seed, embed_limit=a.embed_limit,
                        denoise_previous=a.denoise_previous, upscale_previous=a.upscale_previous, speed_mp=a.speed_mp,
                        fp32_too=a.fp32_too)
    return cfg, (a.make_photos, a.make_from)


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when every model that was found ran, 1 when a model job failed."""
    cfg, (make, source) = parse_args(argv)
    if make is not None:
        from bench._quality_data import make_crops, make_photos

        for path in (make_crops(source, make) if source else make_photos(make)):
            print(path)
        return 0
    report = run(cfg)
    from bench._quality_report import markdown

    md = markdown(report)
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "quality.json").write_text(json.dumps(finite(report), indent=2, default=str, allow_nan=False))
    (cfg.out / "quality.md").write_text(md)
    print(md)
    _say(f"wrote {cfg.out / 'quality.json'} and {cfg.out / 'quality.md'} in {report['bench_seconds']} s")
    failed = failed_models(report)
    for f in failed:
        _say(f"model job failed: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
