"""One worker's whole per-batch path: read + decode each file, predict, write; one bad file fails only its row."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.manifest import make_row
from pipeline.predictor import Predictor
from pipeline.reader import Task, center_square, read_decode
from pipeline.tiling import predict_tiled
from pipeline.writer import write_image


@dataclass
class WorkerSpec:
    """Everything a worker needs, as plain data (sent to each Ray actor once)."""

    job: str  # denoise | upscale | embed
    model_path: str
    model_name: str
    model_version: int
    model_sha256: str
    out_dir: str  # resolved
    device: str = "cpu"  # resolved: cpu | cuda
    threads: int = 1
    tile: int = 512
    batch_size: int = 8
    run: str = ""


@dataclass
class _Decoded:
    task: Task
    image: np.ndarray  # what the model gets (encoders: already S×S)
    icc: bytes | None
    seconds: float
    in_w: int
    in_h: int


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class BatchWorker:
    """Holds one Predictor (session opened once) and turns a list of Tasks into manifest rows."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.predictor = Predictor(spec.model_path, spec.device, spec.threads)
        self.info = self.predictor.info
        self.out_root = Path(spec.out_dir)

    def describe(self) -> dict:
        """Providers and device actually used by this worker's session."""
        return {"providers": self.predictor.providers, "device": self.predictor.device}

    def _row(self, t: Task, **fields) -> dict:
        s = self.spec
        return make_row(path=t.rel, output=t.out, in_bytes=t.size, mtime_ns=t.mtime_ns, job=s.job,
                        model=s.model_name, model_version=s.model_version, model_sha256=s.model_sha256,
                        run=s.run, **fields)

    def process(self, tasks: list[Task]) -> list[dict]:
        """Rows for tasks, in order; ok rows of the embed job carry a 'vector' (float32 [D]) for the driver."""
        decoded: list[_Decoded] = []
        rows: dict[int, dict] = {}
        channels = self.info.channels if self.info.role == "encoder" else 3
        for i, t in enumerate(tasks):
            t0 = time.perf_counter()
            try:
                img, icc = read_decode(t.path, channels)
                in_h, in_w = img.shape[:2]
                if self.info.role == "encoder":
                    img = center_square(img, self.info.input_size)
                decoded.append(_Decoded(t, img, icc, time.perf_counter() - t0, in_w, in_h))
            except Exception as exc:  # noqa: BLE001 - one bad file fails only its own row
                rows[i] = self._row(t, status="failed", error=_err(exc), seconds=time.perf_counter() - t0)
        index = {id(t): i for i, t in enumerate(tasks)}
        if self.info.role == "encoder":
            for t, row in self._embed(decoded):
                rows[index[id(t)]] = row
        else:
            for t, row in self._image2image(decoded):
                rows[index[id(t)]] = row
        return [rows[i] for i in range(len(tasks))]

    # ---- encoders ---------------------------------------------------------------------------------
    def _embed(self, decoded):
        if not decoded:
            return
        t0 = time.perf_counter()
        try:
            vecs = self.predictor({"image": np.stack([d.image for d in decoded])})["embedding"]
        except Exception:  # noqa: BLE001 - retry one by one so a bad input fails alone
            vecs = None
        share = (time.perf_counter() - t0) / len(decoded)
        for j, d in enumerate(decoded):
            size = dict(in_w=d.in_w, in_h=d.in_h, seconds=d.seconds + share)
            try:
                v = vecs[j] if vecs is not None else self.predictor({"image": d.image[None]})["embedding"][0]
                row = self._row(d.task, status="ok", **size)
                row["vector"] = np.asarray(v, dtype=np.float32)
                yield d.task, row
            except Exception as exc:  # noqa: BLE001
                yield d.task, self._row(d.task, status="failed", error=_err(exc), **size)

    # ---- image to image ---------------------------------------------------------------------------
    def _image2image(self, decoded):
        tile, halo, scale = self.spec.tile, self.info.halo, self.info.scale
        # Small images are batched by exact shape (one ONNX call per shape); larger ones go tile by tile.
        buckets: dict[tuple, list] = {}
        for d in decoded:
            h, w = d.image.shape[:2]
            key = (h, w) if max(h, w) <= tile else ("tiled", id(d))
            buckets.setdefault(key, []).append(d)
        for key, group in buckets.items():
            for k in range(0, len(group), self.spec.batch_size):
                chunk = group[k:k + self.spec.batch_size]
                t0 = time.perf_counter()
                outs: list = [None] * len(chunk)
                try:
                    if key[0] == "tiled":
                        outs[0] = predict_tiled(self._predict, chunk[0].image, tile, halo, scale, self.spec.batch_size)
                    else:
                        outs = list(self._predict(np.stack([d.image for d in chunk])))
                except Exception:  # noqa: BLE001 - retried one by one below
                    pass
                share = (time.perf_counter() - t0) / len(chunk)
                for d, out in zip(chunk, outs):
                    yield d.task, self._finish(d, out, share)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return self.predictor({"image": x})["output"]

    def _finish(self, d: _Decoded, out, share: float) -> dict:
        t0 = time.perf_counter()
        try:
            if out is None:  # the batch failed: this image alone
                out = predict_tiled(self._predict, d.image, self.spec.tile, self.info.halo, self.info.scale, 1)
            nbytes = write_image(self.out_root, d.task.out, out, d.icc)
        except Exception as exc:  # noqa: BLE001
            return self._row(d.task, status="failed", error=_err(exc), in_w=d.in_w, in_h=d.in_h,
                             seconds=d.seconds + share + time.perf_counter() - t0)
        return self._row(d.task, status="ok", in_w=d.in_w, in_h=d.in_h, out_w=out.shape[1], out_h=out.shape[0],
                         out_bytes=nbytes, seconds=d.seconds + share + time.perf_counter() - t0)


def failed_rows(spec: WorkerSpec, tasks: list[Task], error: str) -> list[dict]:
    """Failed rows for a whole batch whose worker died (built on the driver)."""
    return [make_row(path=t.rel, status="failed", error=error, output=t.out, in_bytes=t.size, mtime_ns=t.mtime_ns,
                     job=spec.job, model=spec.model_name, model_version=spec.model_version,
                     model_sha256=spec.model_sha256, run=spec.run) for t in tasks]
