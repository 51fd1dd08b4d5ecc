"""`aeflow demo`: train, export, register and promote three small models, then run every batch flow on samples."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow

from pipeline.defaults import RUNNERS

# Training budgets per mode, tuned for 2 CPU cores (full: about 5 minutes for the whole demo).
# kind -> TrainSettings fields. The ae learns labelled crops of the sample photos (samples/ae-train), so its
# kNN accuracy is measurable and the search groups crops of the same photo.
BUDGETS = {
    "full": {"denoise": dict(epochs=4, steps_per_epoch=40, batch_size=16, patch_size=48, size="small"),
             "upscale": dict(epochs=4, steps_per_epoch=40, batch_size=16, patch_size=48, size="small"),
             "ae": dict(epochs=8, batch_size=16, size="small")},
    "quick": {"denoise": dict(epochs=2, steps_per_epoch=15, batch_size=8, patch_size=32, size="tiny"),
              "upscale": dict(epochs=2, steps_per_epoch=15, batch_size=8, patch_size=32, size="tiny"),
              "ae": dict(epochs=4, batch_size=16, size="tiny")},
    # Test-sized: proves the chain, not the models.
    "test": {"denoise": dict(epochs=1, steps_per_epoch=2, batch_size=4, patch_size=24, size="tiny", limit=3),
             "upscale": dict(epochs=1, steps_per_epoch=2, batch_size=4, patch_size=24, size="tiny", limit=3),
             "ae": dict(epochs=1, batch_size=16, size="tiny")},
}
PHOTOS = {"full": 36, "quick": 24, "test": 6}
AE_CROPS = {"full": 16, "quick": 10, "test": 3}  # labelled training crops per source photo


@dataclass
class DemoSettings:
    """Where the demo writes, how much it trains, and how the batch jobs run."""

    workdir: str = "demo-out"
    mode: str = "full"            # full | quick | test
    runner: str = "ray"           # the batch jobs' runner: ray | local
    device: str = "auto"
    photos: int | None = None     # sample images per folder (None: the mode's default)

    def __post_init__(self):
        if self.mode not in BUDGETS:
            raise ValueError(f"mode must be one of {', '.join(BUDGETS)}, not {self.mode!r}")
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, not {self.runner!r}")


@flow(name="demo", log_prints=True)
def demo_flow(workdir: str, mode: str = "full", runner: str = "ray", device: str = "auto",
              clean_dir: str = "", noisy_dir: str = "", lowres_dir: str = "", query: str = "",
              ae_data: str = "builtin:digits") -> dict:
    """Train and promote denoise, upscale x2 and ae, then denoise, upscale and embed the sample folders."""
    from flows.batch import denoise_flow, embed_flow, upscale_flow
    from flows.train import train_flow
    from models.train import TrainSettings

    work, store = Path(workdir), str(Path(workdir) / "store")
    trained = {}
    for kind, budget in BUDGETS[mode].items():
        data = {"data": ae_data} if kind == "ae" else {}
        settings = TrainSettings(kind=kind, device=device, **data, **budget)
        trained[kind] = train_flow(settings, store=store, workdir=str(work / "train" / kind), promote=True)
    jobs = dict(store=store, device=device, runner=runner, batch_size=4)
    out = work / "outputs"
    started_ray = False
    if runner == "ray":  # one local Ray for the three jobs, instead of one start-up each
        from pipeline.engine_ray import connect

        started_ray = connect(None)
    try:
        return {"trained": trained,
                "denoise": denoise_flow(noisy_dir, str(out / "denoised"), model="denoise", **jobs),
                "upscale": upscale_flow(lowres_dir, str(out / "upscaled"), model="upscale-x2", **jobs),
                # each demo run trains a new ae version, whose vectors replace the last run's in the same
                # workdir: the index is rebuilt for it (an update refuses to mix models)
                "embed": embed_flow(clean_dir, str(out / "embeddings"), model="ae", query=query, k=5,
                                    rebuild_index=True, **jobs)}
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def run_demo(s: DemoSettings) -> dict:
    """Make the sample folders, run demo_flow, add PSNRs and write demo-summary.json; returns the summary."""
    from flows.samples import make_labelled_crops, make_sample_folders, mean_psnr

    work = Path(s.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    samples = make_sample_folders(work / "samples", count=s.photos or PHOTOS[s.mode])
    ae_data = make_labelled_crops(work / "samples" / "ae-train", per_photo=AE_CROPS[s.mode])
    query = next(p for p in sorted(samples.clean.glob("*.png")) if p.stat().st_size > 0)
    result = demo_flow(str(work), s.mode, s.runner, s.device, str(samples.clean), str(samples.noisy),
                       str(samples.lowres), str(query), str(ae_data))
    out = work / "outputs"
    result["psnr"] = {
        "noisy_input": mean_psnr(samples.clean, samples.noisy)[0],
        "denoised": mean_psnr(samples.clean, out / "denoised")[0],
        "bicubic_x2": _bicubic_psnr(samples),
        "upscaled": mean_psnr(samples.clean, out / "upscaled")[0],
    }
    result.update(workdir=str(work), store=str(work / "store"), samples=asdict(samples), query=str(query),
                  seconds=round(time.perf_counter() - t0, 1), expected_failures=len(samples.bad))
    tmp = work / ".demo-summary.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(work / "demo-summary.json")
    return result


def _bicubic_psnr(samples) -> float | None:
    """PSNR of plain bicubic x2 on the low-res folder: the baseline the upscaler should beat."""
    import tempfile

    import numpy as np
    from PIL import Image

    from aeflow.imageio import ImageDecodeError, iter_image_paths, load_image
    from flows.samples import mean_psnr

    with tempfile.TemporaryDirectory() as tmp:
        for p in iter_image_paths(samples.lowres):
            try:
                a = load_image(p)
            except ImageDecodeError:
                continue
            q = Path(tmp) / p.relative_to(samples.lowres)
            q.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(a)).resize((a.shape[1] * 2, a.shape[0] * 2), Image.BICUBIC).save(q)
        return mean_psnr(samples.clean, Path(tmp))[0]


def format_summary(r: dict) -> str:
    """The demo's closing report: models and their gate decisions, each job's counts and outputs, PSNRs."""
    from flows.report import job_counts
    from models.promotion import main_metric

    def db(v):
        return "n/a" if v is None else f"{v:.2f} dB"

    lines = ["", f"aeflow demo finished in {r['seconds']:.0f} s; everything is under {r['workdir']}", "",
             f"Models (store {r['store']}):"]
    for kind, t in r["trained"].items():
        key, _ = main_metric(kind)
        value = (t.get("metrics") or {}).get(key)
        shown = f"{key} {value:.4g}" if isinstance(value, (int, float)) else f"{key} n/a"
        lines.append(f"  {t['model']:<14} {shown:<18} {'promoted' if t['promoted'] else 'kept previous'}: "
                     f"{t['reason']}")
    lines += ["", "Batch jobs (the 3 bad files in each sample folder are EXPECTED to fail):"]
    for job in ("denoise", "upscale", "embed"):
        s = r[job]["job"] if job == "embed" else r[job]
        c = job_counts(s)
        ips = s.get("images_per_s")
        lines.append(f"  {job:<8} ok {c['ok']:>3}  failed {c['failed']:>2}  skipped {c['skipped']:>2}  "
                     f"{'' if ips is None else f'{ips:.1f} images/s'}  -> {s.get('out_dir', '')}")
    p = r["psnr"]
    lines += ["", f"PSNR vs clean: noisy input {db(p['noisy_input'])} -> denoised {db(p['denoised'])}; "
              f"bicubic x2 {db(p['bicubic_x2'])} vs upscaled {db(p['upscaled'])}"]
    hits = r["embed"].get("hits") or []
    if hits:
        lines += ["", f"Nearest images to {r['query']}:"]
        lines += [f"  {h.get('rank')}. {h.get('path')} (score {h.get('score'):.3f})" for h in hits]
    lines += ["", f"Summary: {Path(r['workdir']) / 'demo-summary.json'}",
              "Flow runs and their artifacts: `prefect server start`, then open the UI, or see the log above."]
    return "\n".join(lines)
