"""Run a batch job: resolve the model, plan (resume/incremental), choose the engine, record its rows, summarise.

`run_job(JobConfig(...)) -> summary dict` is what the CLI and the Prefect flows call.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from aeflow import storage
from pipeline.defaults import DEFAULT_BATCH_SIZE, DEFAULT_RUNNER, JOB_ROLES, PRECISIONS, RUNNERS
from pipeline.manifest import MANIFEST_DIR, ManifestWriter, RunLock, iter_rows, load_state, new_run_id, write_summary
from pipeline.predictor import DEVICES, JobConfigError, ModelInfo, resolve_device
from pipeline.reader import PlanSettings, Task, plan
from pipeline.writer import FULL_DISK, OUTPUT_FORMATS, OutputSpaceError

log = logging.getLogger(__name__)

EMBED_FLUSH_ROWS = 1024  # vectors buffered on the driver before they become one durable part
EMBED_FLUSH_S = 30.0
FAILURES_SAMPLE = 10

__all__ = ["JobConfig", "JobConfigError", "run_job", "exit_code"]


@dataclass
class JobConfig:
    """One batch job; see `aeflow denoise --help` for the meaning of each field."""

    job: str  # denoise | upscale | embed
    in_dir: str | Path
    out_dir: str | Path
    model: str  # store spec: NAME, NAME:VERSION, NAME:ALIAS or a path
    store: str | Path | None = None
    device: str = "auto"  # auto | cpu | cuda
    address: str | None = None  # Ray: None/'local' = new local instance, 'auto', or HOST:PORT
    batch_size: int | None = None  # None: the job's DEFAULT_BATCH_SIZE
    workers: int | None = None
    format: str = "same"  # same | png | jpg | webp
    overwrite: bool = False
    runner: str = DEFAULT_RUNNER  # auto | ray | local
    tile: int = 512  # tile core size in input pixels for image2image models
    precision: str = "auto"  # auto | fp32 | int8 | fp16 (pipeline.defaults.PRECISIONS)
    progress: bool = True
    s3_endpoint: str | None = None  # an S3-compatible store's URL; None: $AWS_ENDPOINT_URL(_S3) or AWS itself

    def __post_init__(self):
        if self.batch_size is None:  # an unknown job keeps None; _check refuses the job itself
            self.batch_size = DEFAULT_BATCH_SIZE.get(self.job)


def exit_code(summary: dict) -> int:
    """0 when every input is ok or skipped, 3 when some failed."""
    return 3 if summary["counts"].get("failed", 0) else 0


def _check(cfg: JobConfig) -> tuple:
    if cfg.job not in JOB_ROLES:
        raise JobConfigError(f"unknown job {cfg.job!r}; choose from {', '.join(JOB_ROLES)}")
    for name, value, choices in (("runner", cfg.runner, RUNNERS), ("format", cfg.format, OUTPUT_FORMATS),
                                 ("device", cfg.device, DEVICES), ("precision", cfg.precision, PRECISIONS)):
        if value not in choices:
            raise JobConfigError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
    if cfg.batch_size < 1 or cfg.tile < 1 or (cfg.workers is not None and cfg.workers < 1):
        raise JobConfigError("batch size, tile and workers must be >= 1")
    storage.configure(cfg.s3_endpoint)
    in_dir, out_dir = storage.normalize(str(cfg.in_dir)), storage.normalize(str(cfg.out_dir))
    if storage.is_remote(in_dir):
        storage.check_access(in_dir, write=False)
    elif not in_dir.is_dir():
        raise JobConfigError(f"input folder {in_dir} does not exist or is not a folder")
    if storage.is_remote(out_dir):
        storage.check_access(out_dir, write=True)
    if in_dir == out_dir:
        raise JobConfigError("OUT_DIR must differ from IN_DIR (inputs are never modified)")
    if _inside(in_dir, out_dir):
        raise JobConfigError(f"IN_DIR {in_dir} is inside OUT_DIR {out_dir}: outputs could land on inputs")
    # OUT_DIR inside IN_DIR is allowed: its tree is left out of the listing
    exclude = out_dir if _inside(out_dir, in_dir) else None
    return in_dir, out_dir, exclude


def _inside(a, b) -> bool:
    """True when a lies strictly inside b (both local paths, or both URLs)."""
    if storage.is_remote(a) != storage.is_remote(b):
        return False
    if storage.is_remote(a):
        return str(a).startswith(str(b) + "/")
    return b in a.parents


def _load_model(cfg: JobConfig, device: str):
    """(ref, graph path, its sha256, ModelInfo, precision) for the job's model and --precision."""
    from aeflow.store import ModelStore
    from pipeline.graphs import pick_graph

    ref = ModelStore(cfg.store).resolve(cfg.model)
    files = ref.card.get("files", {})
    precision, fname = pick_graph(ref, device, cfg.precision)
    # verifies sha256: a tampered model is refused (exit 2)
    path = ref.file(fname)
    # the card holds the graph's metadata (written at export, bound to the file by its sha256): importing onnx
    # to read it again costs 0.13 s, a tenth of a small embed job; the workers read it from their session
    meta = ref.card.get("onnx", {}).get("metadata") or {}
    info = ModelInfo.from_metadata(meta) if "aeflow.role" in meta else read_model_info(path)
    if info.role != JOB_ROLES[cfg.job]:
        raise JobConfigError(f"model {ref.id} is an {info.role} model; `{cfg.job}` needs {JOB_ROLES[cfg.job]}")
    # the graph's own hash: outputs of the other precision are redone by an incremental run, not kept
    return ref, path, files[fname], info, precision


def read_model_info(path: str | Path) -> ModelInfo:
    """The aeflow metadata of an ONNX file (read with onnx, weights not loaded twice into a session)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return ModelInfo.from_metadata({p.key: p.value for p in m.metadata_props})


def run_job(cfg: JobConfig) -> dict:
    """Run one batch job to the end and return its summary (also written to OUT_DIR/_aeflow/summary.json)."""
    from pipeline.engines import choose_engine, make_engine
    from pipeline.worker import WorkerSpec

    in_dir, out_dir, exclude = _check(cfg)
    device = resolve_device(cfg.device)
    ref, model_path, sha, info, precision = _load_model(cfg, device)
    if not storage.is_remote(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    run = new_run_id()
    spec = WorkerSpec(job=cfg.job, model_path=str(model_path), model_name=ref.name, model_version=ref.version,
                      model_sha256=sha, out_dir=str(out_dir), device=device, threads=os.cpu_count() or 1,
                      tile=cfg.tile, batch_size=cfg.batch_size, run=run, s3_endpoint=storage.endpoint())
    retries0 = storage.retries()
    with RunLock(out_dir, run):
        if storage.is_remote(out_dir):
            # this job's own uploads are single PUTs; these are other tools' (or a killed process's) leftovers
            aborted = storage.abort_uploads(out_dir)
            if aborted:
                log.warning("aborted %d unfinished multipart uploads under %s", aborted, out_dir)
        if cfg.job == "embed":
            _prepare_embeddings(out_dir, cfg.overwrite)
        state = load_state(out_dir)
        t0 = time.perf_counter()
        engine = make_engine(choose_engine(cfg.runner, cfg.address, cfg.workers), spec, info, cfg.workers,
                             cfg.address)
        manifest = ManifestWriter(out_dir, run)
        sink = _Sink(cfg, out_dir, manifest, run, f"{ref.name}:{ref.version}")
        try:
            items = plan(in_dir, out_dir, PlanSettings(cfg.job, cfg.format, sha, cfg.overwrite), state, exclude)
            for rows in engine.rows(_batches(items, cfg.batch_size, sink)):
                sink.rows(rows)
        except OSError as exc:
            _raise_if_full(exc, out_dir)  # the manifest or an embeddings part hit a full disk
            raise
        finally:
            try:
                sink.flush()  # vectors already computed are kept, even when the job stops early
            except OSError as exc:
                _raise_if_full(exc, out_dir)
                raise
            finally:
                sink.close()
                try:
                    manifest.close()
                except OSError as exc:
                    _raise_if_full(exc, out_dir)
                    raise
        facts = {**engine.facts(), "engine": engine.name, "precision": precision}
        # S3 requests retried (throttling, 5xx, dropped connections): the driver's and every worker's
        facts["s3_retries"] = storage.retries() - retries0 + facts.pop("worker_s3_retries", 0)
        summary = _summary(cfg, run, in_dir, out_dir, ref, sha, info, sink, manifest, time.perf_counter() - t0,
                           facts)
        write_summary(out_dir, summary)
    return summary


def _raise_if_full(exc: OSError, out_dir: Path) -> None:
    """Turn ENOSPC/EDQUOT into the job's one clear disk-full error (exit 2); other errors pass."""
    if exc.errno in FULL_DISK:
        raise OutputSpaceError(f"no space left on the disk of {out_dir}: the job stopped; free some space and "
                               "rerun the same command to resume") from None


def _summary(cfg: JobConfig, run: str, in_dir: Path, out_dir: Path, ref, sha: str, info: ModelInfo, sink: "_Sink",
             manifest: ManifestWriter, wall: float, engine: dict) -> dict:
    ok = sink.counts.get("ok", 0)
    summary = {
        "job": cfg.job, "run": run, "in_dir": str(in_dir), "out_dir": str(out_dir), "runner": cfg.runner,
        "model": {"spec": cfg.model, "name": ref.name, "version": ref.version, "sha256": sha,
                  "role": info.role, "scale": info.scale, "halo": info.halo},
        "counts": {"total": sum(sink.counts.values()),
                   **{k: sink.counts.get(k, 0) for k in ("ok", "failed", "skipped")}},
        "wall_s": round(wall, 3), "images_per_s": round(ok / wall, 2) if wall else 0.0,
        # throughput once the workers are up (Ray start-up and model loading excluded)
        "images_per_s_running": round(ok / max(1e-9, wall - engine["startup_s"]), 2),
        "nodes": dict(sink.nodes), "failures_sample": sink.failures,
        "manifest": manifest.rel,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        **engine,
    }
    summary["exit_code"] = exit_code(summary)
    return summary


def _batches(items, size: int, sink: "_Sink") -> Iterator[list[Task]]:
    """Group planned Tasks into batches; rows decided at planning time (skipped, collisions) go straight out."""
    batch: list[Task] = []
    for item in items:
        sink.planned(1)
        if isinstance(item, Task):
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
        else:
            sink.rows([item])
    if batch:
        yield batch


def _prepare_embeddings(out_dir, overwrite: bool) -> None:
    """Embed resume: drop parts no manifest row points at (written by a killed run before its rows)."""
    from pipeline.embeddings import list_parts

    parts = list_parts(out_dir)
    if overwrite:
        # embed --overwrite starts the embeddings afresh; old rows would point at reused part names
        for p in parts:
            storage.delete(p)
        for m in storage.iter_files(out_dir, MANIFEST_DIR):
            storage.delete(m.path)
        return
    referenced = {r.get("part") for r in iter_rows(out_dir)}
    for p in parts:
        if str(p).rsplit("/", 1)[-1] not in referenced:
            log.warning("removing %s: written by an interrupted run before its manifest rows; redone now", p)
            storage.delete(p)


class _Sink:
    """Driver side of every result: manifest rows, embeddings parts, counters and the progress bar."""

    def __init__(self, cfg: JobConfig, out_dir: Path, manifest: ManifestWriter, run: str, model_id: str):
        from tqdm import tqdm

        self.out_dir, self.manifest, self.run, self.model_id = out_dir, manifest, run, model_id
        self.counts: Counter = Counter()
        self.nodes: Counter = Counter()
        self.failures: list[dict] = []  # the first few, for the summary and the CLI
        self.pending: list[dict] = []  # embed: ok rows waiting for their part to be written
        self.last_flush = time.monotonic()
        self.bar = tqdm(total=0, unit="img", desc=cfg.job, disable=not cfg.progress, dynamic_ncols=True)

    def planned(self, n: int) -> None:
        self.bar.total += n  # the total grows while the folder is listed

    def rows(self, rows: list[dict]) -> None:
        """Take a batch of rows; rows with a vector wait for the next embeddings part."""
        ready = []
        for r in rows:
            r["run"] = self.run
            (self.pending if "vector" in r else ready).append(r)
        self._record(ready)
        if self.pending and (len(self.pending) >= EMBED_FLUSH_ROWS
                             or time.monotonic() - self.last_flush > EMBED_FLUSH_S):
            self.flush()

    def _record(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.manifest.write(rows)
        for r in rows:
            self.counts[r["status"]] += 1
            if r["status"] == "failed" and len(self.failures) < FAILURES_SAMPLE:
                self.failures.append({"path": r["path"], "error": r["error"]})
            if r["status"] == "ok":
                self.nodes[r.get("node") or "?"] += 1
        self.bar.update(len(rows))
        self.bar.set_postfix(failed=self.counts["failed"], refresh=False)

    def flush(self) -> None:
        """Write pending vectors as one part (atomic, durable), then their manifest rows."""
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        import numpy as np

        from pipeline.embeddings import EmbeddingWriter

        rows, self.pending = self.pending, []
        vectors = np.stack([r.pop("vector") for r in rows])
        w = EmbeddingWriter(self.out_dir, vectors.shape[1], self.model_id, rows_per_part=max(4096, len(rows)))
        w.add([r["path"] for r in rows], vectors, [r["in_w"] for r in rows], [r["in_h"] for r in rows])
        w.close()  # durable (fsync + atomic publish) before any of its rows is recorded
        part = str(w.written[-1]).rsplit("/", 1)[-1] if w.written else None
        for r in rows:
            r["part"] = part
        self._record(rows)

    def close(self) -> None:
        self.bar.close()
