"""A worker's stages (read + decode, predict, write; one bad file fails only its row) and BatchWorker, all three."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from aeflow import storage
from pipeline import inference
from pipeline.manifest import make_row
from pipeline.predictor import ModelInfo, Predictor
from pipeline.reader import Task
from pipeline.writer import OutputSpaceError, write_image

S3_IO_THREADS = 8  # requests in flight per worker when its inputs or outputs are in S3

# Alpha: the model sees the image composited on white; the input's alpha plane is put back on PNG/WebP/TIFF
# outputs (pipeline.writer.with_alpha), as `aeflow api` does (pipeline/serving_models.py), so both answer the
# same bytes. JPEG outputs stay composited on white.


@dataclass
class WorkerSpec:
    """Everything a worker needs, as plain data (sent to each Ray actor once)."""

    job: str  # denoise | upscale | embed
    model_path: str
    model_name: str
    model_version: int
    model_sha256: str
    out_dir: str  # resolved path or s3:// URL
    s3_endpoint: str | None = None  # the driver's S3 endpoint, for workers on other nodes
    device: str = "cpu"  # resolved: cpu | cuda
    threads: int = 1
    tile: int = 512
    batch_size: int = 8
    run: str = ""


@dataclass
class _Decoded:
    task: Task
    image: np.ndarray | None  # composited on white (encoders: the S×S crop); None once predicted (frees memory)
    icc: bytes | None
    alpha: np.ndarray | None  # the input's alpha plane, put back on image2image outputs that can hold it
    seconds: float
    in_w: int  # the input's full size (EXIF orientation applied), whatever size it was decoded at
    in_h: int


def _decode(t: Task, info: ModelInfo, t0: float) -> _Decoded:
    d = inference.decode_for(t.path, info)
    img, alpha = d.image, d.alpha
    if info.role == "encoder":
        # cropped now, so a batch holds S×S arrays rather than whole decodes (a PNG is never drafted, and embed
        # batches are large); inference.embed's own crop of an S×S array is the identity, vectors are unchanged
        img, alpha = inference.encoder_input(img, info), None
    return _Decoded(t, img, d.icc, alpha, time.perf_counter() - t0, d.width, d.height)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def decode_task(t: Task, info: ModelInfo) -> _Decoded | tuple[str, float]:
    """Stage 1: the decoded input, or (error, seconds) when the file cannot be read or decoded."""
    t0 = time.perf_counter()
    try:
        return _decode(t, info, t0)
    except Exception as exc:  # noqa: BLE001 - one bad file fails only its own row
        return _err(exc), time.perf_counter() - t0


def predict(predictor: Predictor, images: list[np.ndarray], spec: WorkerSpec) -> list:
    """Stage 2: one output (image, vector or the Exception it raised) per decoded input, in order."""
    if predictor.info.role == "encoder":
        return inference.embed(predictor, images)
    return inference.image2image(predictor, images, spec.tile, spec.batch_size)


def task_row(spec: WorkerSpec, t: Task, **fields) -> dict:
    """A manifest row for task t of this job."""
    return make_row(path=t.rel, output=t.out, in_bytes=t.size, mtime_ns=t.mtime_ns, etag=t.etag, job=spec.job,
                    model=spec.model_name, model_version=spec.model_version, model_sha256=spec.model_sha256,
                    run=spec.run, **fields)


def finish(spec: WorkerSpec, role: str, d: _Decoded, out: np.ndarray | Exception, share: float) -> dict:
    """Stage 3: write an image output atomically (encoders: keep the vector) and return its manifest row.

    A full output disk raises pipeline.writer.OutputSpaceError (the job stops) instead of failing the row.
    """
    t0 = time.perf_counter()
    size = dict(in_w=d.in_w, in_h=d.in_h)
    try:
        if isinstance(out, Exception):
            raise out
        if role == "encoder":
            row = task_row(spec, d.task, status="ok", seconds=d.seconds + share, **size)
            row["vector"] = out
            return row
        nbytes = write_image(spec.out_dir, d.task.out, out, d.icc, d.alpha)
    except OutputSpaceError:
        raise  # the disk is full: every later write would fail too, so the job stops
    except Exception as exc:  # noqa: BLE001
        return task_row(spec, d.task, status="failed", error=_err(exc), **size,
                        seconds=d.seconds + share + time.perf_counter() - t0)
    return task_row(spec, d.task, status="ok", out_w=out.shape[1], out_h=out.shape[0], out_bytes=nbytes,
                    seconds=d.seconds + share + time.perf_counter() - t0, **size)


class BatchWorker:
    """The three stages in one process over a list of Tasks, the Predictor (session) opened once.

    The model logic (buckets, tiling, encoder crop) is pipeline.inference's, shared with `aeflow api`.
    """

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        storage.configure(spec.s3_endpoint)
        self.predictor = Predictor(spec.model_path, spec.device, spec.threads)
        self.info = self.predictor.info
        # A worker with several cores decodes a batch's files in parallel (Pillow's decoders release the GIL):
        # for encoders decoding is nearly all the work. One-thread workers do not.
        self.pool = None
        if spec.threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(spec.threads, thread_name_prefix="aeflow-decode")
        # S3 reads and writes wait on the network, not the cores: a batch's GETs and PUTs go out together
        self.io_pool = None

    def describe(self) -> dict:
        """Providers and device actually used by this worker's session."""
        return {"providers": self.predictor.providers, "device": self.predictor.device}

    def process(self, tasks: list[Task]) -> list[dict]:
        """Rows for tasks, in order; ok rows of the embed job carry a 'vector' (float32 [D]) for the driver.

        A full output disk raises pipeline.writer.OutputSpaceError (the job stops) instead of failing rows.
        """
        decoded: list[tuple[int, _Decoded]] = []
        rows: dict[int, dict] = {}
        one = lambda t: decode_task(t, self.info)  # noqa: E731
        pool = self._io() if tasks and storage.is_remote(tasks[0].path) else self.pool
        results = pool.map(one, tasks) if pool and len(tasks) > 1 else map(one, tasks)
        for i, (t, d) in enumerate(zip(tasks, results)):
            if isinstance(d, _Decoded):
                decoded.append((i, d))
            else:
                rows[i] = task_row(self.spec, t, status="failed", error=d[0], seconds=d[1])
        if decoded:
            t0 = time.perf_counter()
            images = [d.image for _, d in decoded]
            outs = predict(self.predictor, images, self.spec)
            share = (time.perf_counter() - t0) / len(decoded)
            del images  # inputs are not needed any more: a very large one is freed before its output is encoded
            for _, d in decoded:
                d.image = None

            def fin(k: int) -> dict:
                out, outs[k] = outs[k], None  # each output is freed once written
                return finish(self.spec, self.info.role, decoded[k][1], out, share)

            remote = storage.is_remote(self.spec.out_dir) and self.info.role != "encoder" and len(decoded) > 1
            for (i, _), row in zip(decoded, (self._io().map if remote else map)(fin, range(len(decoded)))):
                rows[i] = row
        return [rows[i] for i in range(len(tasks))]

    def _io(self):
        if self.io_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.io_pool = ThreadPoolExecutor(max(S3_IO_THREADS, self.spec.threads), thread_name_prefix="aeflow-s3")
        return self.io_pool
