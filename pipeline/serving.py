"""`aeflow api`: the Ray Serve application (one deployment per model kind behind one HTTP ingress), start and stop.

`start(ServeConfig(...)) -> base URL` is what the CLI, the tests and bench/serving.py call; `stop()` undoes it.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from aeflow.errors import UsageError
from pipeline.defaults import DEFAULT_MODELS
from pipeline.serving_http import Limits

log = logging.getLogger(__name__)

APP_NAME = "aeflow"
INGRESS_CPUS = 0.05  # the ingress is mostly waiting; it must never hold a core the models need
INGRESS_MAX_ONGOING = 512

_started_ray = False


@dataclass
class ServeConfig:
    """Everything `aeflow api` takes; see `aeflow api --help`."""

    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None  # Ray: None/'local' = a new local instance, 'auto', or HOST:PORT
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas per model deployment
    device: str = "auto"
    store: str | None = None
    denoise_model: str | None = None  # None for all four: every default model found in the store
    upscale_models: list[str] = field(default_factory=list)
    embed_model: str | None = None
    index_dir: str | None = None
    threads: int = 0  # onnxruntime threads per replica; 0 = cores / max replicas
    replica_cpus: float = 0.25  # Ray CPU request per model replica: fractional, so replicas fit a 2-CPU node
    max_batch_size: int = 8  # serve.batch size per replica; 1 = no request batching
    batch_wait_s: float = 0.01  # serve.batch's wait for more requests once one is in
    tile: int = 512
    poll_s: float = 2.0  # how often replicas re-read the store's aliases
    limits: Limits = field(default_factory=Limits)


def _check(cfg: ServeConfig) -> None:
    if cfg.replicas < 1 or cfg.max_batch_size < 1 or cfg.tile < 1 or cfg.threads < 0:
        raise UsageError("replicas, batch size and tile must be >= 1, threads >= 0")
    lo, hi = cfg.autoscale or (1, 1)
    if not 0 <= lo <= hi or hi < 1:
        raise UsageError(f"--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got {cfg.autoscale}")
    if not 0 <= cfg.batch_wait_s <= 10:
        raise UsageError(f"batch wait must be 0 to 10 s, got {cfg.batch_wait_s}")
    if not 0 < cfg.replica_cpus <= 64:
        raise UsageError(f"replica CPUs must be in (0, 64], got {cfg.replica_cpus}")


def plan_slots(cfg: ServeConfig, device: str):
    """One SlotConfig per model deployment, each spec checked against the store now (UsageError if wrong)."""
    from aeflow.store import ModelStore, StoreError
    from pipeline.runner import read_model_info
    from pipeline.serving_models import ROLES, SlotConfig

    explicit = cfg.denoise_model or cfg.upscale_models or cfg.embed_model
    wanted = [("denoise", cfg.denoise_model), *(("upscale", s) for s in cfg.upscale_models),
              ("embed", cfg.embed_model)]
    if not explicit:
        wanted = list(DEFAULT_MODELS.items())
    if cfg.index_dir:
        from pipeline.index import load_meta

        meta = load_meta(cfg.index_dir)
        if meta is None:
            raise UsageError(f"--index {cfg.index_dir}: no index there; run `aeflow index {cfg.index_dir}` first")
        wanted.append(("search", meta["model"]))
    max_rep = cfg.autoscale[1] if cfg.autoscale else cfg.replicas
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // max_rep)
    store = ModelStore(cfg.store)
    slots = []
    for kind, spec in wanted:
        if not spec:
            continue
        try:
            ref = store.resolve(spec)
            info = read_model_info(ref.onnx_path())
        except StoreError as exc:
            if explicit or kind == "search":
                raise UsageError(f"{kind} model {spec!r}: {exc}") from None
            log.warning("not serving /%s: default model %r: %s", kind, spec, exc)
            continue
        if info.role != ROLES[kind]:
            raise UsageError(f"{kind} model {ref.id} is an {info.role} model; /{kind} needs {ROLES[kind]}")
        slots.append(SlotConfig(kind=kind, spec=spec, store=str(cfg.store) if cfg.store else None, device=device,
                                threads=threads, tile=cfg.tile, max_batch_size=cfg.max_batch_size,
                                batch_wait_s=cfg.batch_wait_s, poll_s=cfg.poll_s,
                                max_pixels=cfg.limits.max_pixels, index_dir=cfg.index_dir))
    if not slots:
        raise UsageError(f"no model to serve: none of {', '.join(DEFAULT_MODELS.values())} is in the store "
                         f"{store.root}; pass --denoise-model/--upscale-model/--embed-model or --store")
    return slots


def build_app(cfg: ServeConfig, device: str = "cpu"):
    """The Serve application: a ModelServer deployment per slot, bound into the Ingress."""
    from ray import serve

    from pipeline.serving_http import Ingress
    from pipeline.serving_models import ModelServer

    models: dict[str, list] = {}
    for slot in plan_slots(cfg, device):
        n = len(models.get(slot.kind, []))
        opts: dict = {
            "name": slot.kind if n == 0 else f"{slot.kind}-{n + 1}",
            "ray_actor_options": {"num_cpus": cfg.replica_cpus, **({"num_gpus": 0.1} if device == "cuda" else {})},
            # room for a full batch being run while the next one fills
            "max_ongoing_requests": max(8, 4 * cfg.max_batch_size),
        }
        if cfg.autoscale:
            lo, hi = cfg.autoscale
            opts["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "initial_replicas": max(lo, 1),
                                          "target_ongoing_requests": max(2, cfg.max_batch_size),
                                          "upscale_delay_s": 3, "downscale_delay_s": 60}
        else:
            opts["num_replicas"] = cfg.replicas
        models.setdefault(slot.kind, []).append(serve.deployment(ModelServer).options(**opts).bind(slot))
    ingress = serve.deployment(Ingress).options(name="ingress", num_replicas=1,
                                                 ray_actor_options={"num_cpus": INGRESS_CPUS},
                                                 max_ongoing_requests=INGRESS_MAX_ONGOING)
    return ingress.bind(models, cfg.limits)


def start(cfg: ServeConfig) -> str:
    """Connect to Ray (local by default), start Serve on host:port and deploy the app; returns the base URL."""
    global _started_ray
    from ray import serve

    from pipeline.engine_ray import connect
    from pipeline.predictor import resolve_device

    _check(cfg)
    device = resolve_device(cfg.device)
    app = build_app(cfg, device)  # checks the models before any cluster starts
    _started_ray = connect(cfg.address) or _started_ray
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    t0 = time.perf_counter()
    serve.run(app, name=APP_NAME, route_prefix="/")
    log.info("aeflow api ready in %.1fs on http://%s:%d", time.perf_counter() - t0, cfg.host, cfg.port)
    return f"http://{cfg.host}:{cfg.port}"


def stop() -> None:
    """Shut Serve down, and Ray too when start() started it."""
    global _started_ray
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        if _started_ray:
            ray.shutdown()
            _started_ray = False


def serve_forever(cfg: ServeConfig) -> int:
    """start(), then block until Ctrl-C or SIGTERM, then stop(); exit code 0."""
    import signal

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    url = start(cfg)
    # SIGTERM (and SIGINT even where a shell started us with it ignored) shut Serve down cleanly
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    print(f"aeflow api: serving on {url} (POST /denoise /upscale /embed /search; GET /models /health /metrics); "
          "Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
    return 0
