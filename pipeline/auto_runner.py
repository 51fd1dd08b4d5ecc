"""The default engine (`--runner auto`): start in-process; start Ray only when the job outlasts Ray's start-up.

Starting a local Ray costs seconds before the first image (ray.init 4-5 s and the actors ~1 s on the 2-core
development machine, plus ~1.3 s of ray.shutdown at the end: docs/benchmarks.md), which a small folder never
earns back. So the driver opens its own worker, times the first batch, and looks ahead in the listing just far
enough to know whether the rest would finish in-process before Ray could even start. If it would, the job stays
in-process. If not, Ray starts in the main thread while the driver keeps working through batches on a helper
thread (the "bridge"); once the actors answer, the bridge hands over after its current batch and is freed.
An explicit `--address`/$RAY_ADDRESS or `--workers` means the user asked for the cluster: Ray, no bridge.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from dataclasses import replace
from itertools import chain
from typing import Callable, Iterator

from pipeline.reader import Task

log = logging.getLogger(__name__)

RAY_START_S = 6.0  # a new local Ray: ray.init + actors ready + ray.shutdown, measured on 2 cores (see above)
ACTORS_START_S = 1.5  # Ray already initialised in this process (a flow, a test session): actors only
LOOKAHEAD_MAX = 50_000  # tasks held while deciding: a million-file folder is never listed up front
# The bridge must not slow Ray's start-up down (measured: a 2-thread bridge at normal priority stretched
# ray.init + actors from ~6 s to ~21 s on 2 cores), so it runs one onnxruntime thread at a lower priority
# and gets the CPU that the starting processes leave idle.
BRIDGE_NICE = 10


def local_budget_s(start_s: float, cpus: int) -> float:
    """In-process seconds under which staying in-process wins: n·t < start + n·t/cpus ⇔ n·t < start·cpus/(cpus−1)."""
    if cpus <= 1:
        return math.inf  # one core: Ray adds start-up and no parallelism
    return start_s * cpus / (cpus - 1)


def _ray_ready() -> bool:
    ray = sys.modules.get("ray")  # not imported here: importing ray alone costs 0.5-5 s
    return bool(ray and ray.is_initialized())


class Bridge:
    """The driver's own worker, run on a thread over the shared batches until Ray's actors take over."""

    def __init__(self, worker, on_rows: Callable[[list[dict]], None]):
        self.worker, self.rows = worker, 0
        self.lock = threading.Lock()  # one caller at a time of the batch iterator and of on_rows
        self._on_rows = on_rows
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def on_rows(self, rows: list[dict]) -> None:
        """on_rows under the bridge's lock (the pump and the bridge both deliver rows)."""
        with self.lock:
            self._on_rows(rows)

    def locked(self, batches: Iterator[list[Task]]) -> Iterator[list[Task]]:
        """The batch iterator, safe to share between the bridge thread and the pump."""
        while True:
            with self.lock:
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def start(self, batches: Iterator[list[Task]]) -> None:
        """Work through batches on a thread until stop() or until they run out."""
        def work():
            _lower_priority()
            try:
                while not self._stop.is_set():
                    with self.lock:
                        batch = next(batches, None)
                    if batch is None:
                        return
                    rows = _tagged(self.worker.process(batch))
                    self.rows += len(rows)
                    self.on_rows(rows)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread by finish()
                self.error = exc

        self._thread = threading.Thread(target=work, name="aeflow-bridge", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop after its current batch (returns at once)."""
        self._stop.set()

    def finish(self) -> None:
        """Stop after the current batch, wait for it, free the worker; re-raise an error the thread met."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.worker = None  # its session (and memory arena) goes now: the actors hold the model from here on
        if self.error is not None:
            err, self.error = self.error, None
            raise err


def _lower_priority() -> None:
    """Lower this thread's scheduling priority (Linux nice values are per thread); elsewhere a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BRIDGE_NICE)
    except (AttributeError, OSError) as exc:  # no setpriority (Windows) or not allowed
        log.debug("bridge priority unchanged: %s", exc)


def _tagged(rows: list[dict]) -> list[dict]:
    for r in rows:
        r["node"] = "driver"
    return rows


def run_auto(spec, batches: Iterator[list[Task]], on_rows: Callable[[list[dict]], None],
             workers: int | None, address: str | None, start_s: float | None = None) -> dict:
    """Process batches in-process or on Ray, whichever finishes first (see the module docstring); engine facts."""
    from pipeline.ray_runner import run_ray
    from pipeline.worker import BatchWorker

    if workers or address not in (None, "local") or os.environ.get("RAY_ADDRESS"):
        return {**run_ray(spec, batches, on_rows, workers, address), "runner_used": "ray", "driver_rows": 0}
    t0 = time.perf_counter()
    cpus = os.cpu_count() or 1
    spec.threads = cpus  # alone on the machine until (unless) Ray starts
    worker = BatchWorker(spec)
    startup = time.perf_counter() - t0
    if start_s is None:
        start_s = ACTORS_START_S if _ray_ready() else RAY_START_S
    budget = local_budget_s(start_s, cpus)
    done, per_image, ahead, exhausted = 0, 0.0, [], True
    first = next(batches, None)
    if first is not None:
        t1 = time.perf_counter()
        on_rows(_tagged(worker.process(first)))
        done = len(first)
        per_image = (time.perf_counter() - t1) / done
        n = 0
        exhausted = False
        while n * per_image < budget and n < LOOKAHEAD_MAX:
            batch = next(batches, None)
            if batch is None:
                exhausted = True
                break
            ahead.append(batch)
            n += len(batch)
    decision = {"first_batch_s_per_image": round(per_image, 5), "local_budget_s": budget,
                "ray_start_estimate_s": start_s}
    if not exhausted:
        log.info("more than %.0f s of work in-process: starting Ray (the driver works until its actors are up)",
                 budget)
        del worker  # an all-cores session; the bridge gets a one-thread one, freed when Ray takes over
        bridge = Bridge(BatchWorker(replace(spec, threads=1)), on_rows)
        engine = run_ray(spec, chain(ahead, batches), on_rows, workers, address, bridge=bridge)
        # rows were made while Ray started, so "start-up" is the driver's, and Ray's own is reported apart
        return {**engine, "startup_s": round(startup, 3), "ray_startup_s": engine["startup_s"],
                "runner_used": "ray", "driver_rows": done + engine.pop("bridge_rows"), "auto": decision}
    for batch in ahead:
        on_rows(_tagged(worker.process(batch)))
        done += len(batch)
    log.info("%d images, ~%.1f s in-process: below Ray's start-up, so no cluster was started", done,
             done * per_image)
    return {"startup_s": round(startup, 3), "workers": 1, "threads_per_worker": cpus, "retried_batches": 0,
            "worker_nodes": ["driver"], **worker.describe(), "runner_used": "local", "driver_rows": done,
            "auto": decision}
