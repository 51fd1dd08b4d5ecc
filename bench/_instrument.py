"""aeflow's own code path with stage timers: run_job(runner='local') in this process, its functions wrapped by timers.

The job itself exposes no per-stage times (summary.json has wall_s; manifest rows one `seconds` per file), so
this is how the bench splits aeflow's per-file work into list/read/decode/infer/encode/write/manifest. Ray is
left out on purpose (one in-process worker using every core): the gap between this run and the CLI run is
what Ray, the driver and process start-up cost.
"""
from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench._models import BenchModel
from bench._modes import Stages, _result


@contextmanager
def _patched(obj, attr: str, wrapper):
    orig = getattr(obj, attr)
    setattr(obj, attr, wrapper(orig))
    try:
        yield
    finally:
        setattr(obj, attr, orig)


class _Exclusive:
    """Exclusive time per stage: a timed call nested in another (decode inside decode_for) counts once."""

    def __init__(self, st: Stages):
        import threading

        # per thread: a worker with several cores decodes a batch on a thread pool, so stage times are then
        # summed over threads and can exceed the wall time ('other' goes negative)
        self.st, self._local = st, threading.local()

    @property
    def stack(self) -> list:
        """This thread's stack of [seconds spent in timed children]."""
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def enter(self) -> float:
        self.stack.append(0.0)
        return time.perf_counter()

    def leave(self, name: str, t0: float) -> None:
        dt = time.perf_counter() - t0
        children = self.stack.pop()
        self.st.add(name, dt - children)
        if self.stack:
            self.stack[-1] += dt

    def fn(self, name: str):
        """Wrapper factory for a function."""
        def wrap(fn):
            def inner(*a, **k):
                t0 = self.enter()
                try:
                    return fn(*a, **k)
                finally:
                    self.leave(name, t0)
            return inner
        return wrap

    def gen(self, name: str):
        """Wrapper factory for a generator function: each step is timed (the listing streams during the job)."""
        def wrap(fn):
            def inner(*a, **k):
                it = fn(*a, **k)
                while True:
                    t0 = self.enter()
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                    finally:
                        self.leave(name, t0)
                    yield item
            return inner
        return wrap


def run_aeflow_local(bm: BenchModel, in_dir: Path, out_dir: Path, device: str) -> dict:
    """(c-local) run_job(JobConfig(..., runner='local')) in-process with aeflow's stage functions timed."""
    import shutil

    import pipeline.manifest as manifest
    import pipeline.predictor as predictor
    import pipeline.reader as reader
    import pipeline.runner as runner
    import pipeline.worker as worker
    import pipeline.writer as writer

    try:
        import pipeline.inference as inference
    except ImportError:
        inference = None

    shutil.rmtree(out_dir, ignore_errors=True)
    st = Stages()
    ex = _Exclusive(st)
    # aeflow's functions per stage; the pipeline's internals move, so a name that is not there is skipped
    # (and listed in the result) rather than failing the bench
    targets = (
        (reader, "iter_listing", ex.gen, "list"),  # walk + stat
        (worker, "_decode", ex.fn, "read"), (inference, "decode_for", ex.fn, "read"),  # exclusive: the rest
        (reader, "read_bytes", ex.fn, "read"),
        (reader, "decode_with_header", ex.fn, "decode"), (inference, "decode_with_header", ex.fn, "decode"),
        (reader, "decode_image_alpha", ex.fn, "decode"), (reader, "decode_image", ex.fn, "decode"),
        (inference, "fit_square", ex.fn, "decode"), (worker, "fit_square", ex.fn, "decode"),  # encoders
        (predictor.Predictor, "__call__", ex.fn, "infer"),
        (writer, "with_alpha", ex.fn, "encode"), (writer, "encode_image", ex.fn, "encode"),
        (writer, "write_bytes_atomic", ex.fn, "write"), (writer, "confined_path", ex.fn, "write"),
        (runner._Sink, "flush", ex.fn, "write"),  # embed: parquet parts
        (manifest.ManifestWriter, "write", ex.fn, "manifest"))
    timed, missing = [], []
    with ExitStack() as stack:
        for obj, attr, factory, stage in targets:
            name = f"{getattr(obj, '__name__', obj)}.{attr}"
            if obj is None or not callable(getattr(obj, attr, None)):
                missing.append(name)
                continue
            stack.enter_context(_patched(obj, attr, factory(stage)))
            timed.append(f"{name}:{stage}")
        cfg = runner.JobConfig(job=bm.job, in_dir=in_dir, out_dir=out_dir, model=bm.spec, store=bm.store,
                               device=device, runner="local", progress=False)
        t0 = time.perf_counter()
        summary = runner.run_job(cfg)
        wall = time.perf_counter() - t0
    return _result("aeflow-local", summary["counts"]["ok"], wall, st, job_wall_s=summary["wall_s"],
                   threads=summary.get("threads_per_worker"), device=summary.get("device"),
                   timed=timed, not_found=missing)
