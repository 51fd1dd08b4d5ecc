"""`aeflow denoise|upscale|embed` (batch jobs) and `aeflow index|search` (embeddings index): thin wrappers."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from aeflow.cli._args import add_s3_endpoint, location, positive_int
from pipeline.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODELS, DEFAULT_RUNNER, PRECISIONS, RUNNERS

_JOB_HELP = {
    "denoise": "denoise every image under IN_DIR into OUT_DIR (same tree)",
    "upscale": "upscale every image under IN_DIR into OUT_DIR (same tree)",
    "embed": "embed every image under IN_DIR into OUT_DIR/embeddings/*.parquet",
}


def add_commands(sub) -> None:
    """Add the job verbs and index/search to the `aeflow` parser."""
    for job, help_ in _JOB_HELP.items():
        p = sub.add_parser(job, help=help_, description=help_ + ". Rerunning resumes: inputs done before with "
                           "the same model and unchanged are skipped. Exit 0: all ok, 3: some files failed, 2: usage.")
        p.add_argument("in_dir", metavar="IN_DIR", type=location, help="a folder or an s3://BUCKET/PREFIX URL")
        p.add_argument("out_dir", metavar="OUT_DIR", type=location, help="a folder or an s3://BUCKET/PREFIX URL")
        p.add_argument("--model", default=DEFAULT_MODELS[job],
                       help="store spec NAME, NAME:VERSION, NAME:ALIAS or a path (default %(default)s)")
        p.add_argument("--store", type=Path, default=None,
                       help="model store folder (default $AEFLOW_HOME or ./aeflow-store)")
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        p.add_argument("--address", default=None,
                       help="Ray: 'local' (default; or $RAY_ADDRESS when set), 'auto', or HOST:PORT of a cluster")
        p.add_argument("--runner", choices=RUNNERS, default=DEFAULT_RUNNER,
                       help="auto (default): Ray Data when --address, $RAY_ADDRESS or --workers is given, else "
                            "in-process; ray: always Ray Data (a new local Ray without an address); local: one "
                            "process, no cluster")
        p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE[job],
                       help="inputs per batch (default %(default)s for this job)")
        p.add_argument("--workers", type=positive_int, default=None,
                       help="Ray actors (default: one per CPU, or per GPU with --device cuda)")
        p.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto (default): the model's int8 graph on CPU, its fp16 graph on CUDA, when it "
                            "has one (PSNR-checked at export), else fp32; fp32; int8 or fp16 (exit 2 if the "
                            "model has none)")
        p.add_argument("--tile", type=positive_int, default=512,
                       help="image2image: images larger than this many input pixels run in overlapping tiles")
        if job != "embed":
            p.add_argument("--format", choices=("same", "png", "jpg", "webp"), default="same",
                           help="output format (default: same as the input)")
        p.add_argument("--overwrite", action="store_true", help="redo every input, even those done before")
        p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
        add_s3_endpoint(p)
        p.set_defaults(func=_cmd_job, job=job)

    p = sub.add_parser("buckets", help="create S3 buckets unless they exist (e.g. in a fresh MinIO)")
    p.add_argument("names", metavar="BUCKET", nargs="+")
    add_s3_endpoint(p)
    p.set_defaults(func=_cmd_buckets)

    p = sub.add_parser("index", help="build or update the ANN index of OUT_DIR/embeddings")
    p.add_argument("out_dir", metavar="OUT_DIR", type=location)
    add_s3_endpoint(p)
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", help="nearest embedded images to an image file or a stored path")
    p.add_argument("out_dir", metavar="OUT_DIR", type=location)
    add_s3_endpoint(p)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", type=Path, help="an image file to embed and search with")
    q.add_argument("--path", help="the relative path of an already embedded image")
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--model", default=None, help="encoder spec (default: the index's model)")
    p.add_argument("--store", type=Path, default=None)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("dedup", help="groups of near-duplicate and identical images in an embed job's output",
                       description="Joins each embedded image to its --k nearest neighbours in OUT_DIR's index "
                                   "whose cosine similarity reaches --threshold, and files with the same content "
                                   "hash, into groups; writes OUT_DIR/dedup/groups.parquet, groups.csv and "
                                   "index.html (a page to review them). Run `aeflow index OUT_DIR` first.")
    p.add_argument("out_dir", metavar="OUT_DIR", type=location)
    add_s3_endpoint(p)
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity that makes a pair near duplicates (default: the model card's "
                        "calibrated value, else 0.9)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours looked at per image (default 10)")
    p.add_argument("--in-dir", type=location, default=None,
                   help="the embedded folder, for content hashes and thumbnails (default: the embed job's)")
    p.add_argument("--store", type=Path, default=None, help="model store holding the embed job's model")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_cmd_dedup)




def _cmd_job(args) -> int:
    from pipeline.runner import JobConfig, exit_code, run_job

    cfg = JobConfig(job=args.job, in_dir=args.in_dir, out_dir=args.out_dir, model=args.model, store=args.store,
                    device=args.device, address=args.address, batch_size=args.batch_size, workers=args.workers,
                    format=getattr(args, "format", "same"), overwrite=args.overwrite, runner=args.runner,
                    tile=args.tile, progress=args.progress, precision=args.precision, s3_endpoint=args.s3_endpoint)
    s = run_job(cfg)
    c = s["counts"]
    print(f"{args.job}: {c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed of {c['total']} "
          f"in {s['wall_s']}s ({s['images_per_s_running']} img/s after {s['startup_s']}s start-up) "
          f"on {s['device']} [{', '.join(s['providers'])}], model {s['model']['name']}:{s['model']['version']} "
          f"({s['precision']}); "
          f"manifest {s['out_dir']}/{s['manifest']}")
    if c["failed"]:
        for f in s["failures_sample"]:
            print(f"  failed: {f['path']}: {f['error']}", file=sys.stderr)
        more = c["failed"] - len(s["failures_sample"])
        print(f"{c['failed']} files failed{f' ({more} more not shown)' if more > 0 else ''}: rows with status "
              "'failed' in the manifest; rerun the same command to retry them", file=sys.stderr)
    return exit_code(s)


def _cmd_buckets(args) -> int:
    from aeflow import storage

    storage.configure(args.s3_endpoint)
    for name in args.names:
        print(f"{'created' if storage.create_bucket(name) else 'exists'}: s3://{name}")
    return 0


def _cmd_index(args) -> int:
    from aeflow import storage

    storage.configure(args.s3_endpoint)
    from pipeline.index import build_index

    meta = build_index(args.out_dir)  # an EmbeddingsError is a UsageError: exit code 2
    print(json.dumps({k: meta.get(k) for k in ("action", "reason", "added", "replaced", "count", "kind", "metric",
                                                 "model") if k in meta}, indent=2))
    return 0


def _cmd_search(args) -> int:
    from aeflow import storage

    storage.configure(args.s3_endpoint)
    from pipeline.search import search

    results = search(args.out_dir, image=args.image, path=args.path, k=args.k, model=args.model, store=args.store)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['rank']:>3}  {r['score']:+.4f}  {r['path']}")
    return 0


def _cmd_dedup(args) -> int:
    from aeflow import storage

    storage.configure(args.s3_endpoint)
    from pipeline.dedup import find_groups

    s = find_groups(args.out_dir, threshold=args.threshold, k=args.k, in_dir=args.in_dir, progress=args.progress,
                    store=args.store)
    mb = s["bytes_freeable"] / 1e6
    print(f"dedup: {s['groups']} groups hold {s['images_in_groups']} of {s['images']} images "
          f"({s['exact_duplicates']} exact copies); {mb:.1f} MB could be freed keeping one per group; "
          f"threshold {s['threshold']:.3f}, k {s['k']}")
    print(f"review: {s.get('page')}  (groups.csv and groups.parquet beside it)"
          + (f"; a local copy: {s['page_local']}" if s.get("page_local") else ""))
    return 0
