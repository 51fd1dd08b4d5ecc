"""`aeflow api`: serve the store's models over HTTP on Ray Serve (a thin wrapper around pipeline.serving)."""
from __future__ import annotations

import argparse
from pathlib import Path

from aeflow.cli._args import positive_int

_DESCRIPTION = """Serve models over HTTP on Ray Serve (local Ray by default), bound to 127.0.0.1 unless told otherwise.
  curl --data-binary @noisy.jpg http://127.0.0.1:8000/denoise -o clean.jpg
  curl --data-binary @small.png 'http://127.0.0.1:8000/upscale?scale=2' -o big.png
  curl --data-binary @photo.jpg http://127.0.0.1:8000/embed          (JSON; ?format=npy or f32 for binary)
  curl --data-binary @photo.jpg 'http://127.0.0.1:8000/search?k=10'  (needs --index)
  curl http://127.0.0.1:8000/models   /health   /metrics
With no model option, every default model found in the store is served (denoise, upscale-x2, ae). A plain
NAME follows its production alias (else latest) while running; NAME:VERSION is pinned."""


def add_commands(sub) -> None:
    """Add the `api` verb to the `aeflow` parser."""
    p = sub.add_parser("api", help="serve denoise/upscale/embed/search over HTTP (Ray Serve)",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--address", default=None,
                   help="Ray: 'local' (default; or $RAY_ADDRESS when set), 'auto', or HOST:PORT of a cluster")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=positive_int, default=1, help="replicas per model (default %(default)s)")
    scale.add_argument("--autoscale", type=_min_max, default=None, metavar="MIN:MAX",
                       help="scale replicas per model between MIN and MAX with the load")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--store", type=Path, default=None,
                   help="model store folder (default $AEFLOW_HOME or ./aeflow-store)")
    p.add_argument("--denoise-model", default=None, metavar="SPEC", help="store spec for /denoise")
    p.add_argument("--upscale-model", dest="upscale_models", action="append", default=[], metavar="SPEC",
                   help="store spec for /upscale (repeat for several scales; ?scale= picks one)")
    p.add_argument("--embed-model", default=None, metavar="SPEC", help="store spec for /embed")
    p.add_argument("--index", type=Path, default=None, metavar="OUT_DIR",
                   help="an `aeflow index` folder for /search (queries use the index's own model)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="requests batched into one model call per replica (1: no batching; default %(default)s)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a replica waits to fill a batch once a request is in (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads per replica (0: cores / replicas)")
    p.add_argument("--replica-cpus", type=float, default=0.25,
                   help="Ray CPUs reserved per replica; fractional so replicas never starve Ray (default %(default)s)")
    p.add_argument("--tile", type=positive_int, default=512, help="image2image: tile core size, as in the batch jobs")
    p.add_argument("--max-bytes", type=positive_int, default=32 * 1024 * 1024, help="largest request body (413 above)")
    p.add_argument("--max-pixels", type=positive_int, default=40_000_000, help="largest image in pixels (413 above)")
    p.set_defaults(func=_cmd_api)




def _port(s: str) -> int:
    v = int(s)
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {v}")
    return v


def _min_max(s: str) -> tuple[int, int]:
    lo, sep, hi = s.partition(":")
    if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) > int(hi) or int(hi) < 1:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with 0 <= MIN <= MAX, MAX >= 1 (e.g. 1:4), got {s!r}")
    return int(lo), int(hi)


def _cmd_api(args) -> int:
    from pipeline.serving import ServeConfig, serve_forever
    from pipeline.serving_http import Limits

    cfg = ServeConfig(host=args.host, port=args.port, address=args.address, replicas=args.replicas,
                      autoscale=args.autoscale, device=args.device, store=str(args.store) if args.store else None,
                      denoise_model=args.denoise_model, upscale_models=args.upscale_models,
                      embed_model=args.embed_model, index_dir=str(args.index) if args.index else None,
                      threads=args.threads, replica_cpus=args.replica_cpus, max_batch_size=args.batch_size,
                      batch_wait_s=args.batch_wait_ms / 1000,
                      tile=args.tile, limits=Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels))
    return serve_forever(cfg)
