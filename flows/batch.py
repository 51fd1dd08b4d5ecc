"""Batch flows over a folder: denoise, upscale, embed (+ index and search); each job runs inside ONE task."""
from __future__ import annotations

import dataclasses

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from aeflow.errors import UsageError
from flows.report import artifact_key, dedup_markdown, job_markdown, search_markdown
from pipeline.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODELS, DEFAULT_RUNNER
from pipeline.runner import JobConfig

# Usage and configuration errors (the store's, the data's, the embeddings' included) and bad arguments are not
# transient: retrying them only delays the message.
_PERMANENT = (UsageError, FileNotFoundError, NotADirectoryError, ValueError, TypeError)


def _is_transient(task, task_run, state) -> bool:
    """Retry condition: retry everything except usage/configuration errors."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classifying, not handling
        return not isinstance(exc, _PERMANENT)
    return True


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=_is_transient)
def run_job_task(cfg: JobConfig) -> dict:
    """Run one whole batch job; a retry resumes where it stopped (jobs skip files already done)."""
    from pipeline.runner import run_job

    summary = run_job(cfg)
    summary["failures"] = failures_of(summary)
    return summary


def failures_of(summary: dict) -> list[dict]:
    """The failed inputs of this run (path and error), read from its manifest."""
    from pipeline.manifest import load_state

    rows = load_state(summary["out_dir"]).values()
    return [{"path": r["path"], "error": r.get("error")} for r in rows
            if r.get("status") == "failed" and r.get("run") == summary.get("run")]


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=_is_transient)
def build_index_task(out_dir: str, rebuild: bool = False, s3_endpoint: str | None = None) -> dict:
    """Build or update the nearest-neighbour index over the embeddings in out_dir (rebuild: from scratch)."""
    from aeflow import storage
    from pipeline.index import build_index

    storage.configure(s3_endpoint)
    return build_index(out_dir, rebuild=rebuild)


@task(cache_policy=NO_CACHE)
def search_task(out_dir: str, query: str, k: int, store: str | None, s3_endpoint: str | None = None) -> list[dict]:
    """The k nearest stored images to a query: an image file, or the stored (relative) path of an embedded one."""
    from pathlib import Path

    from aeflow import storage
    from pipeline.search import search

    storage.configure(s3_endpoint)
    if Path(query).is_file():
        return search(out_dir, image=Path(query), k=k, store=Path(store) if store else None)
    return search(out_dir, path=query, k=k, store=Path(store) if store else None)


@task(cache_policy=NO_CACHE)
def dedup_task(out_dir: str, threshold: float | None, k: int, store: str | None,
               s3_endpoint: str | None = None) -> dict:
    """Groups of near-duplicate and identical images in an embed output (writes OUT_DIR/dedup/, with its page)."""
    from aeflow import storage
    from pipeline.dedup import find_groups

    storage.configure(s3_endpoint)
    return find_groups(out_dir, threshold=threshold, k=k, store=store, progress=False)


def _job_config(job: str, params: dict) -> JobConfig:
    """The JobConfig of a flow run: its parameters are JobConfig's fields under the same names (`aeflow JOB`'s)."""
    fields = {f.name for f in dataclasses.fields(JobConfig)}
    return JobConfig(job=job, **{k: v for k, v in params.items() if k in fields})


def _batch(cfg: JobConfig) -> dict:
    summary = run_job_task(cfg)
    create_markdown_artifact(job_markdown(cfg.job, cfg.model, str(cfg.in_dir), str(cfg.out_dir), summary),
                             key=f"{cfg.job}-{artifact_key(str(cfg.out_dir))[-40:].strip('-')}",
                             description=f"{cfg.job} summary")
    return summary


@flow(name="denoise", flow_run_name="denoise-{model}", log_prints=True)
def denoise_flow(in_dir: str, out_dir: str, model: str = DEFAULT_MODELS["denoise"], store: str | None = None,
                 device: str = "auto", address: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE["denoise"],
                 workers: int | None = None, format: str = "same", overwrite: bool = False,
                 runner: str = DEFAULT_RUNNER, tile: int = 512, precision: str = "auto",
                 s3_endpoint: str | None = None) -> dict:
    """Denoise every image under in_dir into out_dir (incremental); either may be an s3:// URL."""
    return _batch(_job_config("denoise", locals()))


@flow(name="upscale", flow_run_name="upscale-{model}", log_prints=True)
def upscale_flow(in_dir: str, out_dir: str, model: str = DEFAULT_MODELS["upscale"], store: str | None = None,
                 device: str = "auto", address: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE["upscale"],
                 workers: int | None = None, format: str = "same", overwrite: bool = False,
                 runner: str = DEFAULT_RUNNER, tile: int = 512, precision: str = "auto",
                 s3_endpoint: str | None = None) -> dict:
    """Upscale every image under in_dir into out_dir (incremental); either may be an s3:// URL."""
    return _batch(_job_config("upscale", locals()))


@flow(name="embed", flow_run_name="embed-{model}", log_prints=True)
def embed_flow(in_dir: str, out_dir: str, model: str = DEFAULT_MODELS["embed"], store: str | None = None,
               device: str = "auto", address: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE["embed"],
               workers: int | None = None, overwrite: bool = False, runner: str = DEFAULT_RUNNER, index: bool = True,
               rebuild_index: bool = False, query: str | None = None, k: int = 5, dedup: bool = False,
               dedup_threshold: float | None = None, precision: str = "auto", s3_endpoint: str | None = None) -> dict:
    """Embed every image under in_dir, build the index, optionally search it and group duplicates (dedup).

    in_dir and out_dir may be s3:// URLs (s3_endpoint: an S3-compatible store's URL, as `--s3-endpoint`).
    """
    summary = _batch(_job_config("embed", locals()))
    result = {"job": summary}
    if index:
        result["index"] = build_index_task(out_dir, rebuild_index, s3_endpoint)
    if query:
        hits = search_task(out_dir, query, k, store, s3_endpoint)
        create_markdown_artifact(search_markdown(query, hits), key="embed-search", description="search")
        result["hits"] = hits
    if dedup:
        if not index:
            raise ValueError("dedup needs the index: run embed_flow with index=True")
        groups = dedup_task(out_dir, dedup_threshold, 10, store, s3_endpoint)
        create_markdown_artifact(dedup_markdown(out_dir, groups), key=f"dedup-{artifact_key(out_dir)[-40:]}",
                                 description="duplicate groups")
        result["dedup"] = groups
    return result
