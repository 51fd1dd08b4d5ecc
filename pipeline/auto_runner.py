"""The default engine (`--runner auto`): start in-process; start Ray only when it would finish the job sooner.

Starting a local Ray costs seconds before the first image (ray.init 4-5 s and the actors ~1 s on the 2-core
development machine, plus ~1.3 s of ray.shutdown at the end: docs/benchmarks.md), which a small folder never
earns back. So the driver opens its own worker (all cores), times the first batch, and looks ahead in the
listing just far enough to know whether the rest would finish in-process before Ray could even start. If it
would, the job stays in-process. If not, it times one more batch on all cores and two on one thread, as each
Ray actor would run them (the second of each, on warm sessions): in-process onnxruntime already uses every core,
so Ray's one-thread actors gain only what the in-process run leaves serial (the shipped int8 denoiser: Ray's
steady rate was 1.06-1.07x the in-process one), and the break-even moves out accordingly. When Ray
wins, it starts in the main thread while the driver keeps working through batches on a helper thread (the
"bridge", the one-thread worker); once the actors answer, the bridge hands over after its current batch.
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


def local_budget_s(start_s: float, speedup: float) -> float:
    """In-process seconds under which staying in-process wins: n·t < start + n·t/S ⇔ n·t < start·S/(S−1)."""
    if speedup <= 1:
        return math.inf  # Ray adds start-up and no speed: never worth it on this machine
    return start_s * speedup / (speedup - 1)


def ray_speedup(all_cores_s: float, one_thread_s: float, cpus: int) -> float:
    """Ray's rate over the in-process one: `cpus` one-thread actors against one all-cores worker (per image)."""
    return cpus * all_cores_s / one_thread_s if one_thread_s > 0 else float(cpus)


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
    budget = local_budget_s(start_s, cpus)  # the best Ray could do: `cpus` times the in-process rate
    done, per_image, ahead, stay_local, n = 0, 0.0, [], True, 0
    decision: dict = {"ray_start_estimate_s": start_s}
    one = None  # the one-thread worker: it measures what an actor would do, then bridges Ray's start-up

    def fits(limit: float) -> bool:
        """List on until the held work exceeds `limit` in-process seconds; True when the rest fits in it."""
        nonlocal n
        if limit == math.inf:
            return True  # Ray would never catch up: nothing to look ahead for, the listing streams on
        while n * per_image < limit and n < LOOKAHEAD_MAX:
            batch = next(batches, None)
            if batch is None:
                return True
            ahead.append(batch)
            n += len(batch)
        return False

    def take() -> list[Task] | None:
        """The next batch: from those held while looking ahead, else from the listing."""
        nonlocal n
        if ahead:
            n -= len(ahead[0])
            return ahead.pop(0)
        return next(batches, None)

    def timed(w, batch: list[Task] | None) -> float | None:
        """Process a batch on worker w (its rows are delivered); seconds per image, None without a batch."""
        nonlocal done
        if batch is None:
            return None
        t = time.perf_counter()
        on_rows(_tagged(w.process(batch)))
        done += len(batch)
        return (time.perf_counter() - t) / len(batch)

    first = timed(worker, next(batches, None))
    if first is not None:
        per_image = first  # fits() reads it
        stay_local = fits(budget)
        if not stay_local:
            # both rates from warm sessions: a session's first run also allocates its memory arena
            warm = timed(worker, take())
            one = BatchWorker(replace(spec, threads=1))
            timed(one, take())
            one_thread = timed(one, take())
            if None in (warm, one_thread):
                stay_local = True  # the folder ended while measuring
            else:
                speedup = ray_speedup(warm, one_thread, cpus)
                budget = local_budget_s(start_s, speedup)
                decision.update(all_cores_s_per_image=round(warm, 5), one_thread_s_per_image=round(one_thread, 5),
                                ray_speedup_estimate=round(speedup, 3))
                stay_local = fits(budget)
    # JSON has no infinity: null means "no folder is large enough for Ray to win on this machine"
    decision.update(first_batch_s_per_image=round(per_image, 5), local_budget_s=None if budget == math.inf else budget)
    if not stay_local:
        log.info("more than %.0f s of work in-process: starting Ray (the driver works until its actors are up)",
                 budget)
        del worker  # an all-cores session; the one-thread bridge is freed when Ray takes over
        bridge = Bridge(one, on_rows)
        engine = run_ray(spec, chain(ahead, batches), on_rows, workers, address, bridge=bridge)
        # rows were made while Ray started, so "start-up" is the driver's, and Ray's own is reported apart
        return {**engine, "startup_s": round(startup, 3), "ray_startup_s": engine["startup_s"],
                "runner_used": "ray", "driver_rows": done + engine.pop("bridge_rows"), "auto": decision}
    one = None  # not needed in-process: its session's memory goes now
    for batch in chain(ahead, batches):  # the rest of the listing streams on when Ray would never catch up
        on_rows(_tagged(worker.process(batch)))
        done += len(batch)
    if "ray_speedup_estimate" in decision:
        log.info("%d images in-process: Ray's one-thread actors would not have finished sooner (measured "
                 "speed-up %.2f, start-up %.1f s)", done, decision["ray_speedup_estimate"], start_s)
    else:
        log.info("%d images, ~%.1f s in-process: below Ray's start-up, so no cluster was started", done,
                 done * per_image)
    return {"startup_s": round(startup, 3), "workers": 1, "threads_per_worker": cpus, "retried_batches": 0,
            "worker_nodes": ["driver"], **worker.describe(), "runner_used": "local", "driver_rows": done,
            "auto": decision}
