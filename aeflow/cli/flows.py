"""CLI verbs of the orchestration layer: `aeflow demo` (the whole chain end to end) and `aeflow serve` (schedules)."""
from __future__ import annotations

import argparse
import os

from aeflow.cli._args import add_s3_endpoint
from pipeline.defaults import DEFAULT_MODELS, DEFAULT_RUNNER, RUNNERS


def add_commands(sub) -> None:
    """Add `demo` and `serve` to the aeflow parser."""
    p = sub.add_parser("demo", help="train, export, register and promote small models, then run every batch job",
                       description="The whole chain on built-in data: train denoise, upscale x2 and ae, register "
                                   "and promote them, then denoise, upscale, embed and search a sample folder.")
    p.add_argument("--workdir", default="demo-out", help="where everything goes (default: demo-out)")
    p.add_argument("--mode", choices=("full", "quick", "test"), default="full",
                   help="training budget: full (default), quick (about a minute on 2 cores) or test (CI-sized)")
    p.add_argument("--runner", choices=RUNNERS, default="ray",
                   help="batch job runner (default ray: the demo shows the cluster path even on tiny folders)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--photos", type=int, default=None, help="sample photos per folder (default: by mode)")
    p.set_defaults(func=cmd_demo)

    s = sub.add_parser("serve", help="serve aeflow's deployments (nightly embed, weekly retrain) to a Prefect server",
                       description="Registers the deployments with the Prefect server at PREFECT_API_URL (or "
                                   "--api-url) and runs their flow runs in this process until interrupted. "
                                   "Schedules need a real server: prefect server start --host 127.0.0.1 --port 4200")
    s.add_argument("--api-url", help="Prefect API, e.g. http://127.0.0.1:4200/api (default: $PREFECT_API_URL)")
    s.add_argument("--store", help="model store root (default: $AEFLOW_HOME or ./aeflow-store)")
    s.add_argument("--nightly-embed-dir", dest="embed_dir", metavar="DIR", help="watched folder to embed nightly")
    s.add_argument("--embed-out", metavar="DIR", help="output folder of the nightly embed (embeddings + index)")
    s.add_argument("--embed-model", default=DEFAULT_MODELS["embed"],
                   help=f"model spec for the embed (default {DEFAULT_MODELS['embed']})")
    s.add_argument("--cron", default="0 2 * * *", help='nightly embed schedule (default "0 2 * * *")')
    s.add_argument("--embed-interval", type=float, metavar="SECONDS", help="run the embed every SECONDS instead")
    from models.train import KINDS  # the kinds `aeflow train` takes (numpy and Pillow only: no torch)

    s.add_argument("--retrain-kind", default="denoise", choices=(*KINDS, "none"),
                   help="model kind retrained weekly and promoted if better (none: no retrain)")
    s.add_argument("--retrain-cron", default="0 3 * * 0", help='retrain schedule (default "0 3 * * 0")')
    s.add_argument("--retrain-interval", type=float, metavar="SECONDS", help="retrain every SECONDS instead")
    s.add_argument("--retrain-data", default="builtin:photos")
    s.add_argument("--retrain-epochs", type=int, default=10)
    s.add_argument("--retrain-steps", type=int, default=100, help="steps per epoch")
    s.add_argument("--retrain-size", choices=("tiny", "small", "base"), default="small")
    s.add_argument("--runner", choices=RUNNERS, default=DEFAULT_RUNNER,
                   help="batch job runner (default %(default)s: in-process when shorter than starting Ray)")
    s.add_argument("--address", help="Ray cluster address for the batch jobs (e.g. ray-head:6379)")
    add_s3_endpoint(s)
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    s.add_argument("--timezone", default="UTC", help="time zone of the cron schedules")
    s.add_argument("--on-overlap", choices=("enqueue", "cancel-new"), default="enqueue",
                   help="a run due while the previous one of the same deployment runs: wait, or be cancelled")
    s.add_argument("--no-on-demand", dest="on_demand", action="store_false",
                   help="serve only the scheduled deployments")
    s.set_defaults(func=cmd_serve)


def _prefect_env() -> None:
    import logging

    from flows.env import set_prefect_defaults

    set_prefect_defaults()
    # aeflow's CLI logs at INFO; every Prefect API call would otherwise print a line.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo and print where every output went."""
    from aeflow.errors import UsageError

    _prefect_env()
    mode = args.mode
    if args.photos is not None and args.photos < 1:
        raise UsageError("--photos must be at least 1")
    from flows.demo import DemoSettings, format_summary, run_demo

    result = run_demo(DemoSettings(workdir=args.workdir, mode=mode, runner=args.runner, device=args.device,
                                   photos=args.photos))
    print(format_summary(result))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the deployments until interrupted."""
    from aeflow.errors import UsageError

    if args.api_url:  # before prefect is imported: its settings are read once, at import
        os.environ["PREFECT_API_URL"] = args.api_url
    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError("schedules need a Prefect server: start one with `prefect server start --host 127.0.0.1 "
                         "--port 4200` and pass --api-url http://127.0.0.1:4200/api (or export PREFECT_API_URL)")
    if bool(args.embed_dir) != bool(args.embed_out):
        raise UsageError("--nightly-embed-dir and --embed-out go together")
    if args.embed_dir and not args.embed_dir.startswith("s3://") and not os.path.isdir(args.embed_dir):
        raise UsageError(f"--nightly-embed-dir {args.embed_dir}: not a folder")
    for name in ("embed_interval", "retrain_interval"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    _prefect_env()
    from flows.deploy import ServeSettings, serve
    from models.train import TrainSettings

    # runs start in other folders; an s3:// URL is kept as it is
    abspath = lambda p: (p if p.startswith("s3://") else os.path.abspath(p)) if p else None  # noqa: E731
    retrain = None if args.retrain_kind == "none" else TrainSettings(
        kind=args.retrain_kind, data=args.retrain_data, epochs=args.retrain_epochs,
        steps_per_epoch=args.retrain_steps, size=args.retrain_size, device=args.device)
    serve(ServeSettings(
        store=abspath(args.store), embed_dir=abspath(args.embed_dir), embed_out=abspath(args.embed_out),
        embed_model=args.embed_model, embed_cron=args.cron, embed_interval=args.embed_interval,
        retrain=retrain, retrain_cron=args.retrain_cron, retrain_interval=args.retrain_interval,
        runner=args.runner, address=args.address, s3_endpoint=args.s3_endpoint,
        device=args.device, timezone=args.timezone, on_overlap=args.on_overlap, on_demand=args.on_demand))
    return 0
