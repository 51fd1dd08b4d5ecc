"""Training flow: train -> evaluate -> export -> register -> gate -> promote, with a markdown report artifact."""
from __future__ import annotations

import shutil
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from aeflow.store import ModelStore
from flows.report import artifact_key, promotion_markdown
from models.promotion import gate


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def train_task(settings, workdir: Path):
    """Train one model; a retry resumes from workdir/last.pt when the failed try wrote one."""
    from models.train import train_model

    last = Path(workdir) / "last.pt"
    return train_model(settings, Path(workdir), resume=last if last.is_file() else None, progress=True)


@task(cache_policy=NO_CACHE)
def evaluate_task(checkpoint: Path, data: str | None = None, seed: int = 0, limit: int | None = None) -> dict:
    """Metrics of a checkpoint: on its own validation split (data None) or on every image of `data`."""
    from models.evaluate import evaluate_model

    return evaluate_model(Path(checkpoint), data=data, seed=seed, limit=limit)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def register_task(settings, result, metrics: dict, store: str | None, name: str, workdir: Path):
    """Export to ONNX, draw the pictures, write the card and register the folder as the next version."""
    from models.build import package

    return package(settings, result, metrics, ModelStore(store), name, workdir)


@task(cache_policy=NO_CACHE)
def promote_task(store: str | None, name: str, version: int) -> None:
    """Point the `production` alias at version."""
    from aeflow.store import ModelStore

    ModelStore(store).set_alias(name, "production", version)


@flow(name="train", flow_run_name="train-{kind}", log_prints=True)
def train_flow(kind: str, data: str = "builtin:photos", epochs: int = 10, batch_size: int = 32, lr: float = 1e-3,
               latent_dim: int | None = None, scale: int = 2, patch_size: int = 48, steps_per_epoch: int = 100,
               size: str = "small", limit: int | None = None, seed: int = 0, device: str = "auto",
               patience: int = 3, sigma_min: float = 5.0, sigma_max: float = 50.0, val_fraction: float = 0.1,
               beta: float = 1.0, synthetic: int = 0, lr_schedule: str = "constant",
               dilation: int | None = None, prior: str = "gaussian", contrast: float = 0.1, store: str | None = None,
               name: str | None = None,
               workdir: str | None = None, promote: bool = True) -> dict:
    """Train a model, register it as the next version and promote it if it passes the gate."""
    import tempfile

    from models.build import default_name
    from models.train import TrainSettings

    settings = TrainSettings(kind=kind, data=data, epochs=epochs, batch_size=batch_size, lr=lr,
                             latent_dim=latent_dim, scale=scale, patch_size=patch_size,
                             steps_per_epoch=steps_per_epoch, size=size, limit=limit, seed=seed,
                             device=device, patience=patience, sigma_min=sigma_min, sigma_max=sigma_max,
                             val_fraction=val_fraction, beta=beta, synthetic=synthetic,
                             lr_schedule=lr_schedule, dilation=dilation, prior=prior, contrast=contrast)
    name = name or default_name(kind, scale)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"aeflow-train-{name}-"))
    shutil.rmtree(work / "train", ignore_errors=True)  # only a failed try of THIS run may be resumed
    result = train_task(settings, work / "train")
    metrics = evaluate_task(result.checkpoint, seed=seed)  # the card's numbers: the run's own validation split
    ref = register_task(settings, result, metrics, store, name, work)
    st = ModelStore(store)
    decision, prod_version, gate_metrics, prod_metrics = gate(st, name, kind, result.checkpoint, data, metrics,
                                                              seed, limit, evaluate=evaluate_task)
    if promote and decision.promote:
        promote_task(store, name, ref.version)
    promoted = bool(promote and decision.promote)
    create_markdown_artifact(promotion_markdown(ref, decision, prod_version, promoted),
                             key=f"promotion-{artifact_key(name)}", description=f"promotion gate for {ref.id}")
    print(f"{ref.id}: {'promoted' if promoted else 'not promoted'} ({decision.reason})")
    return {"model": ref.id, "path": str(ref.path), "kind": kind, "metrics": metrics,
            "production_version": prod_version, "production_metrics": prod_metrics,
            "gate_metrics": gate_metrics, "promoted": promoted, "reason": decision.reason,
            "device": getattr(result, "device", None), "train_seconds": getattr(result, "seconds", None)}

