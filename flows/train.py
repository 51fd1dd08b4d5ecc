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
from models.train import TrainSettings


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


def _run_name() -> str:
    from prefect.runtime import flow_run

    s = flow_run.parameters.get("settings")
    return f"train-{s.get('kind') if isinstance(s, dict) else getattr(s, 'kind', '?')}"


@flow(name="train", flow_run_name=_run_name, log_prints=True)
def train_flow(settings: TrainSettings, store: str | None = None, name: str | None = None,
               workdir: str | None = None, promote: bool = True) -> dict:
    """Train a model, register it as the next version and promote it if it passes the gate.

    `settings` is what `aeflow train KIND` builds from its options (every field is a parameter of the run).
    """
    import tempfile

    from models.build import default_name

    kind, data, seed, limit = settings.kind, settings.data, settings.seed, settings.limit
    name = name or default_name(kind, settings.scale)
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

