"""The Ray engine: one actor per worker (session opened once), a bounded number of batches in flight.

Plain actors rather than Ray Data: the driver streams the listing, so a million paths are never held in
several copies; each batch is read, decoded, predicted and written inside an actor with a per-file
try/except (one bad file fails only its row); at most `INFLIGHT_PER_WORKER` batches per actor are queued,
which bounds memory. This is the only module that imports ray.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Callable, Iterator

from pipeline.predictor import JobConfigError
from pipeline.reader import Task
from pipeline.worker import BatchWorker, WorkerSpec, failed_rows

log = logging.getLogger(__name__)

INFLIGHT_PER_WORKER = 2  # one batch running, one queued: the actor never waits for the driver
# Actors ask for this fraction of their CPU share, so a busy small cluster never deadlocks on CPU
# accounting (when every CPU is booked, Ray's own tasks and the next actors wait forever); threads use the full share.
CPU_REQUEST_FRACTION = 0.9
START_TIMEOUT_S = 300
MAX_RESTARTS = 4  # per actor; each batch is resent at most once, so a crashing input costs two restarts


class RayWorker:
    """A BatchWorker inside a Ray actor; tags every row with the node that produced it."""

    def __init__(self, spec: WorkerSpec):
        import ray

        self.worker = BatchWorker(spec)
        self.node = ray.get_runtime_context().get_node_id()

    def describe(self) -> dict:
        """Providers, device and node of this actor (also proves it started)."""
        return {**self.worker.describe(), "node": self.node}

    def process(self, tasks: list[Task]) -> list[dict]:
        """BatchWorker.process, rows tagged with this node's id."""
        rows = self.worker.process(tasks)
        for r in rows:
            r["node"] = self.node
        return rows


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


def run_ray(spec: WorkerSpec, batches: Iterator[list[Task]], on_rows: Callable[[list[dict]], None],
            workers: int | None, address: str | None, bridge=None) -> dict:
    """Process batches on Ray actors; on_rows gets each batch's rows on the driver. Returns engine facts.

    bridge (pipeline.auto_runner.Bridge): the driver's own worker, which processes batches while Ray starts
    and stops once the actors answer.
    """
    import ray

    t0 = time.perf_counter()
    if bridge is not None:
        bridge.start(batches)  # before ray.init: it works through the start-up (ray.init must stay on this thread)
        batches, on_rows = bridge.locked(batches), bridge.on_rows
    actors: list = []
    started = False
    try:
        started = connect(address)
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
        if spec.device == "cuda" and gpus < 1:
            raise JobConfigError("--device cuda but the Ray cluster has no GPU")
        n = workers or (int(gpus) if spec.device == "cuda" else max(1, int(cpus)))
        share = cpus / n
        threads = max(1, int(share))
        spec.threads = threads
        opts = dict(num_cpus=max(0.05, round(min(share, threads) * CPU_REQUEST_FRACTION, 2)),
                    num_gpus=(gpus / n if spec.device == "cuda" else 0), scheduling_strategy="SPREAD",
                    # a dead actor is restarted (a few times); _pump resends its batches once (see there)
                    max_restarts=MAX_RESTARTS, max_task_retries=0)
        actor_cls = ray.remote(RayWorker)
        actors = [actor_cls.options(**opts).remote(spec) for _ in range(n)]
        # Work starts on the first actor that answers; the others join as they come up (a node that starts
        # slower, e.g. one without a prestarted worker process, no longer holds back the ones already up).
        starting = {a.describe.remote(): i for i, a in enumerate(actors)}
        infos = _first_ready(starting, n, opts, res)
        startup = time.perf_counter() - t0
        if bridge is not None:
            bridge.stop()  # it delivers the batch it is on; the pump goes on with the rest meanwhile
        retried = _pump(actors, batches, on_rows, spec, starting, infos)
        if len(infos) < n:
            log.warning("%d of %d workers had not started when the job ended; it ran on the other %d",
                        n - len(infos), n, len(infos))
        if spec.device == "cuda" and any(i["device"] != "cuda" for _, i in infos):
            log.warning("CUDA was requested but some workers fell back to CPU: %s",
                        sorted({(i["node"][:8], i["providers"][0]) for _, i in infos}))
        bridge_rows = 0
        if bridge is not None:
            bridge.finish()
            bridge_rows = bridge.rows
        return {"startup_s": round(startup, 3), "workers": n, "threads_per_worker": threads,
                "retried_batches": retried, "bridge_rows": bridge_rows,
                "workers_started": len(infos), "providers": infos[0][1]["providers"],
                "device": infos[0][1]["device"], "ray_address": ray.get_runtime_context().gcs_address,
                "worker_nodes": sorted({i["node"] for _, i in infos})}
    finally:
        if bridge is not None:
            bridge.finish()  # no-op when already finished; otherwise (an error above) waits for its batch
        for a in actors:  # free their CPUs now, also on a cluster that outlives this job
            ray.kill(a)
        if started:
            ray.shutdown()


def _await_restart(actor, timeout_s: float = START_TIMEOUT_S) -> bool:
    """Wait until Ray has restarted a dead actor (a call sent while it restarts fails at once); False if gone."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.describe.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return True
        except ray.exceptions.ActorUnavailableError:  # still restarting
            time.sleep(0.2)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):  # restarts used up, or stuck
            return False
    return False


def _first_ready(starting: dict, n: int, opts: dict, res: dict) -> list[tuple[int, dict]]:
    """Wait (bounded) until one actor of `starting` (describe ref -> actor index) answers; [(index, info)].

    Answered refs leave `starting`. An actor that fails to start is dropped with a warning; when every one
    fails, the first failure is raised.
    """
    import ray

    infos: list[tuple[int, dict]] = []
    first_error: BaseException | None = None
    deadline = time.monotonic() + START_TIMEOUT_S
    while not infos:
        if not starting:
            raise first_error  # type: ignore[misc]  # every actor failed to start
        done, _ = ray.wait(list(starting), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            raise JobConfigError(f"none of {n} workers asking {opts['num_cpus']} CPU each started within "
                                 f"{START_TIMEOUT_S}s (cluster resources: {res}); try fewer --workers")
        for ref in done:
            err = _started(ref, starting.pop(ref), infos)
            first_error = first_error or err
    return infos


def _started(ref, index: int, infos: list[tuple[int, dict]]) -> BaseException | None:
    """Record actor `index`'s describe() answer in infos; its error (logged) when it failed to start."""
    import ray

    try:
        infos.append((index, ray.get(ref)))
        return None
    except ray.exceptions.RayError as exc:
        log.warning("a worker failed to start: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return exc


def _pump(actors, batches, on_rows, spec: WorkerSpec, starting: dict, infos: list) -> int:
    """Keep INFLIGHT_PER_WORKER batches queued per actor, pulling new batches (and listing) only as slots free.

    Actors still starting (`starting`: describe ref -> index; answers are appended to infos) get their batches
    queued at once, so the ones already up work meanwhile and every actor has work when it comes up. The
    batches of an actor that fails to start go back to the others. A batch whose started actor died (killed,
    OOM, segfault) is resent once to the same actor handle, which Ray restarts (max_restarts); only a second
    death fails its rows. Returns how many batches were resent.
    """
    import ray

    from pipeline.writer import OutputSpaceError

    free = deque(i for i in range(len(actors)) for _ in range(INFLIGHT_PER_WORKER))
    inflight: dict = {}
    requeued: deque = deque()  # batches of actors that never started, for the others
    # actors that never started: those that already failed (neither answered nor still starting), and later ones
    dead = set(range(len(actors))) - {i for i, _ in infos} - set(starting.values())

    def give_back(index: int) -> None:
        """Actor `index` will never start: its queued batches go to the others, nothing is lost."""
        dead.add(index)
        for ref in [r for r, (a, _, _) in inflight.items() if a == index]:
            requeued.append(inflight.pop(ref)[1])

    exhausted = False
    retried = 0
    deadline = time.monotonic() + START_TIMEOUT_S  # for the actors still starting
    while True:
        while free and (requeued or not exhausted):
            a = free.popleft()
            if a in dead:
                continue  # its slot is gone
            batch = requeued.popleft() if requeued else next(batches, None)
            if batch is None:
                exhausted = True
                free.appendleft(a)
                break
            inflight[actors[a].process.remote(batch)] = (a, batch, 0)
        if not inflight:
            if requeued:  # nobody left to run them
                raise JobConfigError(f"no worker could start ({len(dead)} failed); see the warnings above")
            return retried  # every batch is done
        done, _ = ray.wait([*starting, *inflight], num_returns=1, timeout=1.0 if starting else None)
        if starting:  # every answer already in, before failures are judged (ray.wait returns in list order)
            answered, _ = ray.wait(list(starting), num_returns=len(starting), timeout=0)
            done = [*answered, *(r for r in done if r not in starting)]
        for ref in [r for r in done if r in starting]:
            index = starting.pop(ref)
            if _started(ref, index, infos) is not None:
                give_back(index)
        if starting and time.monotonic() > deadline:  # hung, not failed: give up on them
            log.warning("%d workers did not start within %ds: their batches go to the others", len(starting),
                        START_TIMEOUT_S)
            for index in starting.values():
                give_back(index)
            starting.clear()
        for ref in [r for r in done if r in inflight]:
            # a finished batch of an actor that has not answered (all answers are in, and describe() runs
            # first): it died while starting
            if inflight[ref][0] in starting.values():
                give_back(inflight[ref][0])
        done = [r for r in done if r in inflight]
        for ref in done:
            a, batch, attempt = inflight.pop(ref)
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # raised by our code inside a live actor
                if isinstance(exc.cause, OutputSpaceError):
                    raise OutputSpaceError(str(exc.cause)) from None
                # BatchWorker catches per-file errors, so this is a bug: resending would fail the same way
                log.warning("a worker raised on a batch of %d files: %s", len(batch), exc.cause)
                rows = failed_rows(spec, batch, f"worker error: {type(exc.cause).__name__}: {exc.cause}")
            except ray.exceptions.RayError as exc:  # the actor process died
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if attempt == 0 and _await_restart(actors[a]):
                    log.warning("a worker died on a batch of %d files (%s): resent to the restarted worker",
                                len(batch), first)
                    retried += 1
                    inflight[actors[a].process.remote(batch)] = (a, batch, 1)
                    continue
                why = "died twice on this batch" if attempt else "died and could not be restarted"
                log.warning("a worker %s (%d files): %s", why, len(batch), first)
                rows = failed_rows(spec, batch, f"worker {why}: {type(exc).__name__}")
            on_rows(rows)
            free.append(a)
