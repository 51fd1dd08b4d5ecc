"""Model replicas of `aeflow api`: a store model that follows alias moves, batched with serve.batch per replica."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from ray import serve  # this module is only imported where Serve runs

from aeflow.imageio import DEFAULT_MAX_PIXELS, ImageDecodeError
from pipeline import inference
from pipeline.defaults import JOB_ROLES
from pipeline.writer import ALPHA_SUFFIXES, encode_image, with_alpha

log = logging.getLogger(__name__)

# the API's routes and the role each one's model must have: the jobs', and /search answers with the embed model
ROLES = {**JOB_ROLES, "search": JOB_ROLES["embed"]}


@dataclass
class SlotConfig:
    """One model deployment: which store model answers a route and how its replicas batch."""

    kind: str  # denoise | upscale | embed | search
    spec: str  # store spec (NAME follows production/latest; NAME:VERSION is pinned); search: the index's model
    store: str | None = None
    device: str = "cpu"  # resolved: cpu | cuda
    threads: int = 1
    tile: int = 512
    max_batch_size: int = 8  # 1 turns request batching off
    batch_wait_s: float = 0.01
    poll_s: float = 2.0  # how often the store's aliases are re-read
    max_pixels: int = DEFAULT_MAX_PIXELS
    index_dir: str | None = None  # search: an `aeflow index` OUT_DIR


class LiveModel:
    """A Predictor for a store spec; re-resolves the spec at most every poll_s and reloads when the version moves.

    A version that fails to load (bad sha256, wrong role) is logged and the current one keeps answering.
    """

    def __init__(self, spec: str, store: str | None, role: str, device: str, threads: int, poll_s: float):
        self.spec, self.store, self.role = spec, store, role
        self.device, self.threads, self.poll_s = device, threads, poll_s
        self._lock = threading.Lock()
        self.ref, self.predictor = self._load(self._resolve())
        self.checked = time.monotonic()
        self.last_error: str | None = None

    def _resolve(self):
        from aeflow.store import ModelStore

        return ModelStore(self.store).resolve(self.spec)

    def _load(self, ref):
        from pipeline.graphs import pick_graph
        from pipeline.predictor import JobConfigError, Predictor, resolve_device

        # the graph the batch jobs run for this model and device (int8 on CPU where it ships), so the same image
        # comes back with the same bytes from `aeflow denoise` and from the API
        self.precision, fname = pick_graph(ref, resolve_device(self.device))
        pred = Predictor(str(ref.file(fname)), self.device, self.threads)  # file() verifies the sha256
        if pred.info.role != self.role:
            raise JobConfigError(f"model {ref.id} is an {pred.info.role} model; this route needs {self.role}")
        if self.role == "encoder" and not pred.info.input_size:
            raise JobConfigError(f"encoder {ref.id} has no fixed input size (aeflow.input_size)")
        return ref, pred

    def retarget(self, spec: str) -> None:
        """Follow another spec from now on (search: the index was rebuilt with another model)."""
        if spec != self.spec:
            self.spec = spec
            self.checked = 0.0

    def current(self):
        """(ModelRef, Predictor) now answering; cheap unless poll_s passed and the resolved version changed."""
        now = time.monotonic()
        if now - self.checked < self.poll_s:
            return self.ref, self.predictor
        with self._lock:
            if now - self.checked >= self.poll_s:
                self.checked = now
                try:
                    ref = self._resolve()
                    if ref.id != self.ref.id or ref.sha256 != self.ref.sha256:
                        self.ref, self.predictor = self._load(ref)
                        log.warning("%s: now answering with %s", self.spec, ref.id)
                    self.last_error = None
                except Exception as exc:  # noqa: BLE001 - keep serving the loaded version
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("%s: keeping %s, cannot switch: %s", self.spec, self.ref.id, self.last_error)
        return self.ref, self.predictor


def _error(status: int, message: str, model: str) -> dict:
    return {"status": status, "error": message, "model": model}


class ModelServer:
    """One replica: decode a request's bytes, run it in a serve.batch batch with other requests, encode the answer."""

    def __init__(self, cfg: SlotConfig):
        self.cfg = cfg
        self.index = None
        spec = cfg.spec
        if cfg.kind == "search":
            from pipeline.serving_search import LiveIndex

            self.index = LiveIndex(cfg.index_dir, cfg.poll_s)
            spec = self.index.model
        self.live = LiveModel(spec, cfg.store, ROLES[cfg.kind], cfg.device, cfg.threads, cfg.poll_s)
        self._batched.set_max_batch_size(cfg.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_s)

    def describe(self) -> dict:
        """What answers here: model id, spec, metadata, device."""
        ref, pred = self.live.current()
        info = pred.info
        out = {"kind": self.cfg.kind, "model": ref.id, "spec": self.live.spec, "sha256": ref.sha256,
               "role": info.role, "scale": info.scale, "input_size": info.input_size, "channels": info.channels,
               "device": pred.device, "providers": pred.providers, "max_batch_size": self.cfg.max_batch_size,
               "last_reload_error": self.live.last_error}
        if self.index is not None:
            out["index"] = self.index.describe()
        return out

    async def infer(self, data: bytes, out_format: str | None = None, k: int = 10) -> dict:
        """Answer one request: {'status', 'model', 'batch', and 'body'+'format' | 'vector' | 'results' | 'error'}."""
        loop = asyncio.get_running_loop()
        if self.index is not None:
            self.live.retarget(await loop.run_in_executor(None, self.index.refresh))
        ref, pred = await loop.run_in_executor(None, self.live.current)  # a reload never blocks the loop
        try:
            dec = await loop.run_in_executor(None, inference.decode_for, data, pred.info, self.cfg.max_pixels)
        except ImageDecodeError as exc:
            return _error(400, str(exc), ref.id)
        out, model, batch = await self._batched(dec.image)
        if isinstance(out, Exception):
            return _error(500, f"inference failed: {type(out).__name__}: {out}", model)
        res = {"status": 200, "model": model, "batch": batch}
        if self.cfg.kind in ("denoise", "upscale"):
            fmt = out_format or dec.format
            suffix = inference.SUFFIX_OF_FORMAT.get(fmt, ".png")  # unknown input formats answer PNG
            if suffix in ALPHA_SUFFIXES:  # the input's transparency comes back, as in the batch job
                out = with_alpha(out, dec.alpha)
            try:
                res["body"] = await loop.run_in_executor(None, encode_image, out, suffix, dec.icc)
            except Exception as exc:  # noqa: BLE001 - e.g. a mode the asked-for format cannot hold
                return _error(500, f"cannot encode the answer as {suffix}: {type(exc).__name__}: {exc}", model)
            res["format"] = suffix
        elif self.index is not None:
            try:
                res["results"] = self.index.search(out, model, k)
            except Exception as exc:  # noqa: BLE001 - the index's own problem, reported as such
                return _error(503, f"search failed: {type(exc).__name__}: {exc}", model)
        else:
            res["vector"] = out
        return res

    # serve.batch collects concurrent infer() calls of this replica into one list; sizes are set in __init__.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batched(self, images: list[np.ndarray]) -> list[tuple]:
        def run():
            ref, pred = self.live.current()  # one version answers a whole batch
            if self.cfg.kind in ("denoise", "upscale"):
                return ref, inference.image2image(pred, images, self.cfg.tile, self.cfg.max_batch_size)
            return ref, inference.embed(pred, images)

        # in a thread, so the replica's event loop keeps accepting (and batching) requests meanwhile
        ref, outs = await asyncio.get_running_loop().run_in_executor(None, run)
        return [(o, ref.id, len(images)) for o in outs]

