"""Deployments and schedules (never inside flow bodies): a nightly embed, a weekly retrain + promote, on-demand jobs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from models.train import TrainSettings
from pipeline.defaults import DEFAULT_MODELS

OVERLAP = {"enqueue": "ENQUEUE", "cancel-new": "CANCEL_NEW"}


@dataclass
class ServeSettings:
    """What `aeflow serve` serves; a schedule is a cron string or, when set, an interval in seconds."""

    store: str | None = None
    embed_dir: str | None = None          # the watched folder; no nightly embed without it
    embed_out: str | None = None
    embed_model: str = DEFAULT_MODELS["embed"]
    embed_cron: str = "0 2 * * *"
    embed_interval: float | None = None
    # the weekly retrain: the settings `aeflow train` would use (None: no scheduled retrain)
    retrain: TrainSettings | None = field(default_factory=lambda: TrainSettings(kind="denoise", epochs=10))
    retrain_cron: str = "0 3 * * 0"
    retrain_interval: float | None = None
    runner: str = "auto"                  # pipeline.defaults.DEFAULT_RUNNER
    address: str | None = None
    s3_endpoint: str | None = None        # when the folders are s3:// URLs of an S3-compatible store
    device: str = "auto"
    timezone: str = "UTC"
    on_overlap: str = "enqueue"           # what a run that would overlap the running one does
    on_demand: bool = True                # also serve unscheduled train/denoise/upscale/embed deployments


def _schedule(cron: str, interval: float | None, timezone: str):
    from datetime import timedelta

    from prefect.schedules import Cron, Interval

    if interval:
        return Interval(timedelta(seconds=interval))
    return Cron(cron, timezone=timezone)


def build_deployments(s: ServeSettings) -> list:
    """The RunnerDeployments to serve; each allows one run at a time (deployment concurrency limit 1)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.types.entrypoint import EntrypointType

    from flows.batch import denoise_flow, embed_flow, upscale_flow
    from flows.train import train_flow

    if s.on_overlap not in OVERLAP:
        raise ValueError(f"on_overlap must be one of {', '.join(OVERLAP)}, not {s.on_overlap!r}")
    if bool(s.embed_dir) != bool(s.embed_out):
        raise ValueError("the nightly embed needs both a watched folder and an output folder")
    # Module entrypoints: the served runs import `flows.*` from the installed package, whatever the cwd.
    common = dict(entrypoint_type=EntrypointType.MODULE_PATH, tags=["aeflow"],
                  concurrency_limit=ConcurrencyLimitConfig(
                      limit=1, collision_strategy=ConcurrencyLimitStrategy[OVERLAP[s.on_overlap]]))
    jobs = dict(store=s.store, runner=s.runner, address=s.address, device=s.device, s3_endpoint=s.s3_endpoint)
    out = []
    if s.embed_dir:
        out.append(embed_flow.to_deployment(
            "nightly-embed", schedule=_schedule(s.embed_cron, s.embed_interval, s.timezone),
            parameters=dict(in_dir=s.embed_dir, out_dir=s.embed_out, model=s.embed_model, **jobs),
            description=f"embed new images under {s.embed_dir} and rebuild the index", **common))
    if s.retrain:
        kind = s.retrain.kind
        out.append(train_flow.to_deployment(
            f"weekly-retrain-{kind}", schedule=_schedule(s.retrain_cron, s.retrain_interval, s.timezone),
            parameters=dict(settings=asdict(s.retrain), store=s.store, promote=True),
            description=f"retrain {kind} and promote it if it beats production", **common))
    if s.on_demand:
        out.append(train_flow.to_deployment("on-demand", parameters=dict(store=s.store), **common))
        for fl in (denoise_flow, upscale_flow, embed_flow):
            out.append(fl.to_deployment("on-demand", parameters=dict(jobs), **common))
    return out


def serve(s: ServeSettings) -> None:
    """Register the deployments with the Prefect server and run their flow runs here until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(s), print_starting_message=True)
