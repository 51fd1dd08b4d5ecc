"""The batch engines behind one interface: `local` (in-process) and `ray` (Ray Data), chosen before the job starts.

An engine takes the job's WorkerSpec and the planned batches of Tasks and yields manifest rows, batch by
batch, in any order; pipeline/runner.py records them the same way whichever engine made them.
"""
from __future__ import annotations

import os
import time
from typing import Iterator, Protocol

from pipeline.predictor import ModelInfo
from pipeline.reader import Task
from pipeline.worker import WorkerSpec


class Engine(Protocol):
    """What the runner needs from an engine."""

    name: str

    def rows(self, batches: Iterator[list[Task]]) -> Iterator[list[dict]]:
        """Manifest rows (encoders' ok rows carry a 'vector') for every Task of `batches`, exactly once each."""

    def facts(self) -> dict:
        """Engine facts for the summary: workers, threads, providers, device, nodes, start-up and retries."""


def choose_engine(runner: str, address: str | None, workers: int | None) -> str:
    """`ray` when asked for (--runner ray), or when a cluster is named (--address, $RAY_ADDRESS) or --workers is
    given; `local` otherwise: in-process onnxruntime already uses every core of one machine."""
    if runner in ("local", "ray"):
        return runner
    if workers or address not in (None, "local") or os.environ.get("RAY_ADDRESS"):
        return "ray"
    return "local"


def make_engine(name: str, spec: WorkerSpec, info: ModelInfo, workers: int | None, address: str | None) -> Engine:
    """The engine called `name` for this job (ray is imported only when it is the one)."""
    if name == "ray":
        from pipeline.engine_ray import RayEngine

        return RayEngine(spec, info, workers, address)
    return LocalEngine(spec)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: taskset, a container's cpuset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


class LocalEngine:
    """One in-process worker using every core: the three stages run batch after batch in the driver."""

    name = "local"

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.spec.threads = usable_cores()
        self._facts: dict = {}

    def rows(self, batches: Iterator[list[Task]]) -> Iterator[list[dict]]:
        """BatchWorker.process per batch, rows tagged with node 'local'."""
        from pipeline.worker import BatchWorker

        t0 = time.perf_counter()
        worker = BatchWorker(self.spec)
        self._facts = {"startup_s": round(time.perf_counter() - t0, 3), **worker.describe()}
        for batch in batches:
            rows = worker.process(batch)
            for r in rows:
                r["node"] = "local"
            yield rows

    def facts(self) -> dict:
        """One worker on this machine's cores."""
        return {"startup_s": 0.0, "workers": 1, "threads_per_worker": self.spec.threads, "restarted_workers": 0,
                "worker_nodes": ["local"], **self._facts}
