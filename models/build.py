"""Build steps shared by the CLI and the Prefect flows: train → evaluate → pictures → export → card → register."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def default_name(kind: str, scale: int = 2) -> str:
    """The store name a kind registers under by default (upscale carries its scale)."""
    return f"upscale-x{scale}" if kind == "upscale" else kind


def code_version() -> str:
    """aeflow's version, plus the git commit (and '-dirty') when the code runs from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("aeflow")
    except PackageNotFoundError:
        v = "unknown"
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{v}+git.{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return v


def export_model(checkpoint: Path, out_dir: Path, name: str, version: int) -> dict:
    """Export the checkpoint's model to out_dir/model.onnx (+ decoder.onnx) and copy it to out_dir/checkpoint.pt."""
    from models.checkpoint import load_model
    from models.export import export_onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(checkpoint)
    result = export_onnx(model, out_dir / "model.onnx", name=name, version=version)
    if model.kind in ("denoise", "upscale"):
        from aeflow.store import FP16_FILE
        from models.half import build_fp16
        from models.quantize import INT8_FILE, build_int8

        # jobs run these graphs by default (--precision auto: int8 on CPU, fp16 on CUDA), and only when they
        # kept the PSNR
        scale = int(getattr(model.cfg, "scale", 1))
        result["int8"] = build_int8(model, model.kind, scale, out_dir / "model.onnx", out_dir / INT8_FILE)
        result["fp16"] = build_fp16(model.kind, scale, out_dir / "model.onnx", out_dir / FP16_FILE)
    if Path(checkpoint).resolve() != (out_dir / "checkpoint.pt").resolve():
        tmp = out_dir / ".checkpoint.pt.tmp"
        shutil.copy2(checkpoint, tmp)
        tmp.replace(out_dir / "checkpoint.pt")
    return result


def make_card(*, settings, result, metrics: dict, export: dict, pictures: list[str]) -> dict:
    """The card (see docs/architecture.md) from TrainSettings, TrainResult, metrics, export_model's dict and pictures.

    The store adds name, version, created and the sha256 of each .onnx file when it registers the folder.
    """
    from models.evaluate import MAIN_METRIC

    key, higher = MAIN_METRIC[settings.kind]
    history = list(result.history)
    best = min(history, key=lambda h: h["val_loss"]) if history else None
    onnx = {k: export[k] for k in ("inputs", "outputs", "opset", "exporter", "metadata") if k in export}
    parity = dict(export.get("parity", {}))
    if "decoder" in export:
        dec = export["decoder"]
        onnx["decoder"] = {k: dec[k] for k in ("inputs", "outputs", "metadata") if k in dec}
        parity["decoder"] = dec.get("parity", {})
    return {
        "kind": settings.kind,
        "code_version": code_version(),
        "data": dict(result.data),
        "settings": dataclasses.asdict(settings),
        "metrics": dict(metrics),
        "main_metric": {"name": key, "higher_is_better": higher, "value": metrics.get(key)},
        "parity": parity,
        "onnx": onnx,
        "pictures": sorted(Path(p).name for p in pictures),
        **{k: export[k] for k in ("int8", "fp16") if k in export},
        "training": {"device": result.device, "seconds": result.seconds, "epochs": len(history),
                     "best_epoch": best["epoch"] if best else None, "history": history},
    }


def _auto_resume(workdir: Path, settings, finished_ok: bool) -> Path | None:
    """workdir/last.pt when it holds an interrupted run of exactly these settings; otherwise clear it away.

    A finished run is resumed (to export and register it without training again) only if `finished_ok`.
    """
    last = workdir / "last.pt"
    if not last.is_file():
        return None
    from models.checkpoint import load_checkpoint
    from models.train import run_finished

    try:
        ckpt = load_checkpoint(last)
        same = ckpt.get("settings") == dataclasses.asdict(settings)
        usable = same and (finished_ok or not run_finished(ckpt, settings))
    except Exception as exc:  # noqa: BLE001 - an unreadable leftover: start over
        log.warning("ignoring unreadable %s: %s", last, exc)
        usable = False
    if usable:
        log.info("resuming the run left in %s", workdir)
        return last
    log.info("starting a new run in %s (the one there has other settings or is finished)", workdir)
    for f in ("last.pt", "best.pt"):
        (workdir / f).unlink(missing_ok=True)
    return None


def package(settings, result, metrics: dict, store, name: str, workdir: Path):
    """Export → pictures → card → register: the next version of `name` (the CLI and the train flow share it)."""
    from models.pictures import make_pictures

    build = Path(workdir) / "build"
    shutil.rmtree(build, ignore_errors=True)  # a retry starts from an empty build folder
    export = export_model(result.checkpoint, build, name, store.next_version(name))  # copies checkpoint.pt too
    pictures = make_pictures(result.checkpoint, build, seed=settings.seed)
    card = make_card(settings=settings, result=result, metrics=metrics, export=export, pictures=pictures)
    return store.register(name, build, card, move=True)


def build_and_register(settings, store, name: str | None = None, resume: Path | None = None,
                       workdir: Path | None = None, promote: bool = False):
    """Train → evaluate → pictures → export → register in `store`; returns the new ModelRef.

    Default workdir: STORE/.work/NAME, removed once the model is registered. An interrupted run in the
    workdir resumes when the same settings run again. `promote` points `production` at the new version
    if it passes the promotion gate (models/promotion.py, the train flow's rule).
    """
    from models.evaluate import evaluate_model
    from models.promotion import gate
    from models.train import train_model

    name = name or default_name(settings.kind, settings.scale)
    own_workdir = workdir is None
    workdir = Path(workdir) if workdir is not None else Path(store.root) / ".work" / name
    workdir.mkdir(parents=True, exist_ok=True)
    if resume is None:
        resume = _auto_resume(workdir, settings, finished_ok=own_workdir)
    result = train_model(settings, workdir, resume=resume)
    log.info("trained %s in %.0f s on %s; evaluating", name, result.seconds, result.device)
    metrics = evaluate_model(result.checkpoint, seed=settings.seed)
    ref = package(settings, result, metrics, store, name, workdir)
    if promote:
        decision = gate(store, name, settings.kind, result.checkpoint, settings.data, metrics, settings.seed,
                        settings.limit)[0]
        if decision.promote:
            store.set_alias(name, "production", ref.version)
        log.info("%s: %s (%s)", ref.id, "promoted" if decision.promote else "not promoted", decision.reason)
    if own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return ref
