"""The `ray` engine on Ray Data: plan parts → actor pool (CPU: every stage; GPU: decode tasks → predict → write tasks).

The driver streams the planned Tasks into Parquet parts under OUT_DIR/_aeflow/plan/ (bounded memory for any
folder size), and Ray Data streams them through the stages of pipeline/worker.py. On CPU each actor runs all
three (WorkerStage: read + decode, predict, write), so no image crosses the object store; with --device cuda,
decode and write run as CPU tasks on every node and the GPU actors only predict (PredictStage, `num_gpus`
each). Every stage carries a per-row error column, so one bad file fails only its own row (Ray Data's
max_errored_blocks would drop whole blocks). Rows come back to the driver through iter_batches; only they are
recorded, so a retried task or a restarted actor never duplicates a row. This module and pipeline/serving.py
are the only ones that import ray.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from aeflow import storage
from pipeline.manifest import META_DIR
from pipeline.predictor import JobConfigError, ModelInfo, Predictor
from pipeline.reader import Task
from pipeline.worker import BatchWorker, WorkerSpec, _Decoded, decode_task, finish, predict, task_row
from pipeline.writer import OutputSpaceError

log = logging.getLogger(__name__)

PLAN_DIR = f"{META_DIR}/plan"
PLAN_ROWS_PER_PART = 10_000  # Tasks per Parquet part: the driver holds at most one part while listing
PLAN_COLUMNS = ("path", "rel", "out", "size", "mtime_ns", "etag")
PLAN_ROW_BYTES = 200  # about, in memory: two paths, an output name, two integers
# CPU requests are accounting, not limits: decode/write tasks and actors ask for fractions, so a 2-CPU node
# always has room for the tasks that feed its actors (with whole CPUs, the actors hold every CPU and the
# read tasks starve: the job hangs with no error). Each actor's session still runs its full share of threads.
TASK_CPUS = 0.25
ACTOR_CPU_FRACTION = 0.5
OBJECT_STORE_SHARE = 0.5  # of the cluster's object store, for the job's blocks in flight
START_TIMEOUT_S = 300  # actors not up by then: the job stops with a configuration error, never waits forever
# A killed actor is restarted and its batch resent (bounded, so an input that crashes its worker every time
# stops the job with an error instead of looping; a rerun resumes from the manifest)
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 2
MAX_BATCHES_PER_BLOCK = 4
BLOCKS_PER_ACTOR = 4  # so the last blocks still spread over the actors
FATAL_DISK = "disk-full"  # a write task's marker: the output disk is full, the job stops


def connect(address: str | None) -> bool:
    """ray.init for --address (None: $RAY_ADDRESS, else a new local instance); True when we started it."""
    import ray

    if ray.is_initialized():
        if address not in (None, "local", "auto"):
            log.warning("Ray is already initialised in this process: --address %s is ignored", address)
        return False  # a caller (a test session, a flow) already connected: use that
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address == "local":
        # address="local": a stale ray_current_cluster file, left by a cluster that is gone, would otherwise make a
        # plain init try to join it
        ray.init(address="local", num_cpus=os.cpu_count() or 1, **common)
    else:
        ray.init(address=address, **common)
    return True


def write_plan(batches: Iterator[list[Task]], plan_dir) -> list[tuple[str, int]]:
    """Stream the Tasks into Parquet parts under plan_dir (emptied first); (part path, Tasks in it) of each.

    On an s3:// OUT_DIR the parts are objects, so read tasks on any node find them without a shared folder.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    storage.delete_tree(plan_dir)  # a killed run's plan: this run plans afresh
    held: list[Task] = []
    parts: list[tuple[str, int]] = []

    def flush() -> None:
        table = pa.table({"path": [t.path for t in held], "rel": [t.rel for t in held],
                          "out": [t.out or "" for t in held], "size": pa.array([t.size for t in held], pa.int64()),
                          "mtime_ns": pa.array([t.mtime_ns for t in held], pa.int64()),
                          "etag": [t.etag or "" for t in held]})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path = storage.join(plan_dir, f"part-{len(parts):06d}.parquet")
        storage.write_bytes(path, sink.getvalue().to_pybytes())
        parts.append((str(path), len(held)))
        held.clear()

    for batch in batches:
        held.extend(batch)
        if len(held) >= PLAN_ROWS_PER_PART:
            flush()
    if held:
        flush()
    return parts


def _read_part(path: str, endpoint: str | None) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    storage.configure(endpoint)
    return [pq.read_table(pa.BufferReader(storage.read_bytes(path)))]


def plan_source(parts: list[tuple[str, int]], endpoint: str | None = None):
    """A Ray Data datasource of the plan parts: one read task per part, its row count known from write_plan.

    read_parquet would first sample the parts' metadata in a remote task of its own, a worker process started
    for nothing: on a 1-CPU node that was a second of the job's start-up.
    """
    from functools import partial

    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class PlanSource(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(n for _, n in parts) * PLAN_ROW_BYTES

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            return [ReadTask(partial(_read_part, path, endpoint),
                             BlockMetadata(num_rows=n, size_bytes=n * PLAN_ROW_BYTES, input_files=None,
                                           exec_stats=None))
                    for path, n in parts]

    return PlanSource()


def _objects(arrays: list) -> np.ndarray:
    """A 1-d object array of arrays (Ray Data stores arrays of varying shapes as one tensor column)."""
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def _tasks(batch: dict) -> list[Task]:
    return [Task(str(p), str(r), str(o) or None, int(s), int(m), str(e) or None)
            for p, r, o, s, m, e in zip(*(batch[c] for c in PLAN_COLUMNS))]


def _retried(since: int, n: int) -> np.ndarray:
    """The S3 retries of this process since `since`, on the first of n rows (the driver sums the column)."""
    out = np.zeros(n, np.int64)
    if n:
        out[0] = storage.retries() - since
    return out


_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)  # a failed row's image: every row of a column has the same ndim
_NO_ALPHA = np.zeros((0, 0), np.uint8)


def decode_stage(batch: dict, info: ModelInfo, endpoint: str | None = None) -> dict:
    """Ray task: read + decode each planned file; a file that fails gets its error and an empty image."""
    storage.configure(endpoint)
    since = storage.retries()
    images, alphas, iccs, ws, hs, errors, seconds = [], [], [], [], [], [], []
    for t in _tasks(batch):
        d = decode_task(t, info)
        ok = isinstance(d, _Decoded)
        images.append(d.image if ok else _NO_IMAGE)
        alphas.append(d.alpha if ok and d.alpha is not None else _NO_ALPHA)
        iccs.append(d.icc or b"" if ok else b"")
        ws.append(d.in_w if ok else -1)
        hs.append(d.in_h if ok else -1)
        errors.append("" if ok else d[0])
        seconds.append(d.seconds if ok else d[1])
    return {**{c: batch[c] for c in PLAN_COLUMNS}, "image": _objects(images), "alpha": _objects(alphas),
            "icc": np.array(iccs, dtype=object), "in_w": np.array(ws), "in_h": np.array(hs),
            "error": np.array(errors, dtype=object), "seconds": np.array(seconds, dtype=np.float64),
            "s3_retries": _retried(since, len(errors))}


def _icc(v) -> bytes | None:
    """An ICC profile cell as bytes (Ray Data may hand binary cells back as uint8 arrays); None when empty."""
    b = v.tobytes() if isinstance(v, np.ndarray) else bytes(v or b"")
    return b or None


def _decoded(batch: dict) -> list[_Decoded]:
    return [_Decoded(t, im, _icc(icc), a if a.size else None, float(s), int(w), int(h))
            for t, im, a, icc, s, w, h in zip(_tasks(batch), batch["image"], batch["alpha"], batch["icc"],
                                              batch["seconds"], batch["in_w"], batch["in_h"])]


class _Actor:
    """What both layouts' actors share: the session opened once, and the tags of every row they return."""

    def __init__(self, spec: WorkerSpec, predictor: Predictor):
        import ray

        self.spec, self.predictor = spec, predictor
        ctx = ray.get_runtime_context()
        self.node = ctx.get_node_id()
        # every row of a restarted life names its actor, so the driver counts restarts even when the batch that
        # was resent first is the one whose output had already streamed back (Ray drops that duplicate)
        self.restarted = ctx.get_actor_id() if ctx.was_current_actor_reconstructed else ""

    def tags(self, n: int) -> dict:
        """The node, restarted-actor, device and provider columns for n rows."""
        return {k: np.array([v] * n, dtype=object) for k, v in (
            ("node", self.node), ("restarted", self.restarted), ("device", self.predictor.device),
            ("provider", self.predictor.providers[0]))}


def local_model(spec: WorkerSpec, graph: bytes | None) -> WorkerSpec:
    """spec, its model_path naming a file on this node that holds the job's graph: the driver's own path when
    this node sees that very file (sha256 checked), else a copy of the bytes the driver sent, so nodes need
    no shared folder for the model store."""
    import dataclasses
    import hashlib
    import tempfile

    try:
        if hashlib.sha256(Path(spec.model_path).read_bytes()).hexdigest() == spec.model_sha256:
            return spec
    except OSError:
        pass
    if graph is None:
        raise JobConfigError(f"model {spec.model_path} is not on this node and the driver sent no copy")
    f = Path(tempfile.gettempdir()) / "aeflow-models" / f"{spec.model_sha256}.onnx"
    if not f.is_file():
        storage.write_bytes(f, graph)
    return dataclasses.replace(spec, model_path=str(f))


class PredictStage(_Actor):
    """Ray Data actor of the split layout: predicts every decoded row."""

    def __init__(self, spec: WorkerSpec, graph: bytes | None = None):
        spec = local_model(spec, graph)
        super().__init__(spec, Predictor(spec.model_path, spec.device, spec.threads))

    def __call__(self, batch: dict) -> dict:
        """Adds 'output' (image, or vector for encoders; empty on failure), per-row error, seconds and node."""
        decoded = _decoded(batch)
        errors = list(batch["error"])
        live = [i for i, e in enumerate(errors) if not e]
        empty = np.zeros((0,), np.float32) if self.predictor.info.role == "encoder" else _NO_IMAGE
        outputs, seconds = [empty] * len(decoded), np.array(batch["seconds"], dtype=np.float64)
        if live:
            t0 = time.perf_counter()
            outs = predict(self.predictor, [decoded[i].image for i in live], self.spec)
            share = (time.perf_counter() - t0) / len(live)
            for i, y in zip(live, outs):
                seconds[i] += share
                if isinstance(y, Exception):
                    errors[i] = f"{type(y).__name__}: {y}"
                else:
                    outputs[i] = y
        keep = {c: batch[c] for c in (*PLAN_COLUMNS, "alpha", "icc", "in_w", "in_h", "s3_retries")}
        return {**keep, "output": _objects(outputs), "error": np.array(errors, dtype=object), "seconds": seconds,
                **self.tags(len(decoded))}


class WorkerStage(_Actor):
    """Ray Data actor of CPU jobs: the three stages of pipeline/worker.py in one call (BatchWorker), per batch.

    Only the plan's rows go in and manifest rows come out: no image crosses the object store, and no decode or
    write task needs a worker process of its own (on a 1-CPU node, Ray keeps one idle worker and restarts the
    others for every task: that churn cost more CPU than the job's own decoding).
    """

    def __init__(self, spec: WorkerSpec, graph: bytes | None = None):
        spec = local_model(spec, graph)
        self.worker = BatchWorker(spec)
        super().__init__(spec, self.worker.predictor)

    def __call__(self, batch: dict) -> dict:
        """Manifest rows (JSON), vectors and a disk-full marker for the batch's Tasks."""
        tasks = _tasks(batch)
        since = storage.retries()
        try:
            rows, fatal = self.worker.process(tasks), [""] * len(tasks)
        except OutputSpaceError as exc:
            rows = [task_row(self.spec, t, status="failed", error=str(exc)) for t in tasks]
            fatal = [FATAL_DISK] * len(tasks)
        return {**_result(rows, fatal), **self.tags(len(rows)), "s3_retries": _retried(since, len(rows))}


def _result(rows: list[dict], fatal: list[str]) -> dict:
    """The columns every layout hands back to the driver: JSON rows, their vectors, disk-full markers."""
    vectors = []
    for row in rows:
        vector = row.pop("vector", None)
        vectors.append(vector if vector is not None else np.zeros((0,), np.float32))
    return {"row": np.array([json.dumps(r) for r in rows], dtype=object), "vector": _objects(vectors),
            "fatal": np.array(fatal, dtype=object)}


def write_stage(batch: dict, spec: WorkerSpec, role: str) -> dict:
    """Ray task: write each output atomically; one JSON manifest row per input (plus encoders' vectors).

    A full disk marks the rows FATAL_DISK instead of raising, so the driver stops the job with its clear error.
    """
    storage.configure(spec.s3_endpoint)
    since = storage.retries()
    rows, fatal = [], []
    for d, y, err in zip(_decoded({**batch, "image": batch["output"]}), batch["output"], batch["error"]):
        try:
            if err:
                row = task_row(spec, d.task, status="failed", error=str(err), seconds=d.seconds,
                               **({"in_w": d.in_w, "in_h": d.in_h} if d.in_w >= 0 else {}))
            else:
                row = finish(spec, role, d, y, 0.0)
            fatal.append("")
        except OutputSpaceError as exc:
            row, fatal = task_row(spec, d.task, status="failed", error=str(exc)), [*fatal, FATAL_DISK]
        rows.append(row)
    return {**_result(rows, fatal), **{c: batch[c] for c in ("node", "restarted", "device", "provider")},
            "s3_retries": np.asarray(batch["s3_retries"], np.int64) + _retried(since, len(rows))}


def batches_per_block(tasks: int, batch_size: int, actors: int) -> int:
    """Batches in one block, the unit an actor is sent: up to MAX_BATCHES_PER_BLOCK while every actor still
    gets BLOCKS_PER_ACTOR blocks. Each block costs a round trip through Ray (task, object store, stats): on a
    1-CPU node, 8-image blocks ran 8.5 img/s, 32-image ones 10.1, the in-process engine 9.2-9.6."""
    fits = tasks // max(1, batch_size * actors * BLOCKS_PER_ACTOR)
    return max(1, min(MAX_BATCHES_PER_BLOCK, fits))


def layout(device: str) -> str:
    """How the stages are laid out on the cluster: `split` for GPU actors (decode and write run as CPU tasks
    on every node, so the GPUs only predict), `fused` on CPU (each actor runs all three on its own cores)."""
    return "split" if device == "cuda" else "fused"


def _actor_options() -> dict:
    """Predictor actors: restarted when killed and their batch resent, both bounded (see MAX_RESTARTS).

    Ray Data's own defaults are unbounded, so an input that kills its worker every time would loop for ever.
    Ray 2.60 has no named parameter for these yet (it warns that the keyword form is deprecated).
    """
    return {"max_restarts": MAX_RESTARTS, "max_task_retries": MAX_TASK_RETRIES}


def _unless_no_actors(batches: Iterator[dict], ray, workers: int) -> Iterator[dict]:
    """The result batches; actors that never started (no room for them, or a node that never came up) end
    the job with a configuration error (exit 2) instead of Ray Data's timeout traceback."""
    try:
        yield from batches
    except ray.exceptions.GetTimeoutError as exc:
        raise JobConfigError(f"Ray could not start the job's {workers} worker(s) within {START_TIMEOUT_S} s: the "
                             "cluster has no room for them, or a node never came up (see `ray status`); "
                             "fewer --workers, or more nodes") from exc


def _quiet_data_context():
    """Ray Data's own progress bars and per-dataset logs off (aeflow's bar counts images); bounded resources."""
    import ray.data as rd

    ctx = rd.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.verbose_stats_logs = False
    ctx.override_object_store_memory_limit_fraction = OBJECT_STORE_SHARE
    ctx.wait_for_min_actors_s = START_TIMEOUT_S
    # Each block goes to the least busy actor, not to one beside the data: a plan block is a few hundred bytes
    # (the option is deprecated in Ray 2.60 but still read by its actor pools)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctx.execution_options.actor_locality_enabled = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ctx


class RayEngine:
    """The job on a Ray cluster (a new local one, $RAY_ADDRESS or --address) through Ray Data."""

    name = "ray"

    def __init__(self, spec: WorkerSpec, info: ModelInfo, workers: int | None, address: str | None):
        self.spec, self.info, self.workers, self.address = spec, info, workers, address
        self._facts: dict = {"startup_s": 0.0, "workers": 0, "threads_per_worker": 0, "restarted_workers": 0,
                             "worker_nodes": [], "worker_s3_retries": 0}
        self._restarted: set[str] = set()

    def _pool(self, ray) -> tuple[int, dict]:
        """(actors, their resource request) from the cluster's resources."""
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
        if self.spec.device == "cuda" and gpus < 1:
            raise JobConfigError("--device cuda but the Ray cluster has no GPU")
        n = self.workers or (int(gpus) if self.spec.device == "cuda" else max(1, int(cpus)))
        share = cpus / n
        self.spec.threads = max(1, int(share))
        request = dict(num_cpus=max(0.05, round(share * ACTOR_CPU_FRACTION, 2)),
                       num_gpus=(gpus / n if self.spec.device == "cuda" else None))
        return n, request

    def rows(self, batches: Iterator[list[Task]]) -> Iterator[list[dict]]:
        """Plan, then stream the dataset; the plan parts are removed at the end."""
        import ray

        t0 = time.perf_counter()
        plan_dir = storage.join(self.spec.out_dir, PLAN_DIR)
        started = connect(self.address)
        marks = {"connected": time.perf_counter() - t0}
        try:
            parts = write_plan(batches, plan_dir)
            if not parts:
                return
            marks["planned"] = time.perf_counter() - t0
            ds = self._dataset(ray, parts)
            marks["dataset"] = time.perf_counter() - t0
            first = True
            for b in _unless_no_actors(ds.iter_batches(batch_size=None, batch_format="numpy"), ray,
                                       self._facts["workers"]):
                if first:
                    self._facts["startup_s"] = round(time.perf_counter() - t0, 3)
                    log.debug("ray engine start-up, seconds since it began: %s, first rows %.2f",
                              ", ".join(f"{k} {v:.2f}" for k, v in marks.items()), self._facts["startup_s"])
                    first = False
                yield self._take(b)
        finally:
            try:
                storage.delete_tree(plan_dir)
            except OSError as exc:  # S3 unreachable at the very end: the next run replaces the plan anyway
                log.warning("could not remove the plan %s: %s", plan_dir, exc)
            if started:
                ray.shutdown()

    def _dataset(self, ray, parts: list[tuple[str, int]]):
        import ray.data as rd

        _quiet_data_context()
        n, request = self._pool(ray)
        info = self.info
        size = self.spec.batch_size
        self._facts.update(workers=n, threads_per_worker=self.spec.threads)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", category=DeprecationWarning)
            return self._stages(rd, parts, n, request, info, size)

    def _stages(self, rd, parts: list[tuple[str, int]], n: int, request: dict, info: ModelInfo, size: int):
        gpu = {"num_gpus": request["num_gpus"]} if request["num_gpus"] else {}
        # Blocks of one to MAX_BATCHES_PER_BLOCK batches, cut by the read tasks themselves (a repartition would
        # be an all-to-all step asking a whole CPU, which a node whose actors hold part of its only CPU never
        # has: the job would hang)
        total = sum(k for _, k in parts)
        blocks = max(1, -(-total // (size * batches_per_block(total, size, n))))
        # A fixed pool (Ray Data starts all n actors before the first block, waiting up to START_TIMEOUT_S), one
        # block in flight per actor (a block is seconds of work: the round trip to send the next is noise): with
        # more, the first actor up could take every block of a small job while another node's actor idled (1 run
        # in 5 of the two-node test; none in 10 like this)
        pool = dict(compute=rd.ActorPoolStrategy(min_size=n, max_size=n, max_tasks_in_flight_per_actor=1),
                    num_cpus=request["num_cpus"], **_actor_options(), **gpu)
        plan = rd.read_datasource(plan_source(parts, self.spec.s3_endpoint), num_cpus=TASK_CPUS,
                                  override_num_blocks=blocks)
        self._facts["layout"] = layout(self.spec.device)
        # the graph travels with the actors (the object store), for nodes that do not see the driver's store
        actor_args = {"spec": self.spec, "graph": Path(self.spec.model_path).read_bytes()}
        if self._facts["layout"] == "fused":
            return plan.map_batches(WorkerStage, batch_size=size, fn_constructor_kwargs=actor_args, **pool)
        return (plan
                .map_batches(decode_stage, batch_size=size, fn_kwargs={"info": info, "endpoint": self.spec.s3_endpoint},
                             num_cpus=TASK_CPUS)
                .map_batches(PredictStage, batch_size=size, fn_constructor_kwargs=actor_args, **pool)
                .map_batches(write_stage, batch_size=size, fn_kwargs={"spec": self.spec, "role": info.role},
                             num_cpus=TASK_CPUS))

    def _take(self, b: dict) -> list[dict]:
        """Manifest rows of one result batch; a disk-full marker stops the job."""
        for f, row in zip(b["fatal"], b["row"]):
            if f == FATAL_DISK:
                raise OutputSpaceError(json.loads(row)["error"])
        rows = []
        for row, vector, node in zip(b["row"], b["vector"], b["node"]):
            r = json.loads(row)
            r["node"] = str(node)
            if r["status"] == "ok" and vector.size:
                r["vector"] = np.asarray(vector, dtype=np.float32)
            rows.append(r)
        f = self._facts
        f["worker_s3_retries"] = f.get("worker_s3_retries", 0) + int(np.sum(b["s3_retries"]))
        self._restarted.update(str(a) for a in b["restarted"] if a)
        f["restarted_workers"] = len(self._restarted)
        f["worker_nodes"] = sorted({*f["worker_nodes"], *map(str, b["node"])})
        f.setdefault("device", str(b["device"][0]))
        f.setdefault("providers", [str(b["provider"][0])])
        return rows

    def facts(self) -> dict:
        """Actors, threads each, the nodes that predicted, actors restarted, start-up (to the first rows)."""
        import ray

        address = ray.get_runtime_context().gcs_address if ray.is_initialized() else self.address
        return {**self._facts, "ray_address": address}

