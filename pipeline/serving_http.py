"""The HTTP ingress of `aeflow api`: routes, input limits (checked before decoding), formats, model header, metrics."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from dataclasses import dataclass

import numpy as np

from aeflow.imageio import ImageDecodeError, open_image
from pipeline.serving_metrics import Metrics

log = logging.getLogger(__name__)

MODEL_HEADER = "X-Aeflow-Model"
IMAGE_ROUTES = ("denoise", "upscale")
POST_ROUTES = ("denoise", "upscale", "embed", "search")
GET_ROUTES = ("models", "health", "metrics")
# Accept / Content-Type media types <-> Pillow format names
MEDIA_FORMATS = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG", "image/webp": "WEBP",
                 "image/bmp": "BMP", "image/tiff": "TIFF", "image/gif": "GIF"}
SUFFIX_MEDIA = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".bmp": "image/bmp",
                ".tif": "image/tiff", ".gif": "image/gif"}
# curl --data-binary sends application/x-www-form-urlencoded unless told otherwise: accepted as raw bytes
BODY_TYPES = ("", "application/octet-stream", "application/x-www-form-urlencoded")
MAX_K = 1000
DESCRIBE_TIMEOUT_S = 10.0


@dataclass
class Limits:
    """Inputs refused with 413 before any pixel is decoded."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000


class HTTPError(Exception):
    """An answer other than 200, with a JSON body {'error': message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _json(status: int, obj, model: str) -> "Response":  # noqa: F821 - starlette, imported lazily
    from starlette.responses import Response

    return Response(json.dumps(obj), status_code=status, media_type="application/json",
                    headers={MODEL_HEADER: model})


def output_format(accept: str) -> str | None:
    """The Pillow format the Accept header asks for, or None (answer in the input's format)."""
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in MEDIA_FORMATS:
            return MEDIA_FORMATS[media]
    return None


class Ingress:
    """Routes requests to the model deployments; every response names the model version that answered."""

    def __init__(self, models: dict, limits: Limits):
        self.models = models  # kind -> list of DeploymentHandles (upscale: one per scale)
        self.limits = limits
        self.metrics = Metrics()
        self.ids: dict[str, str] = {}  # kind -> model id that last answered (for routes that answer themselves)
        self.scales: dict[int, object] | None = None

    async def __call__(self, request):
        """Answer one HTTP request."""
        endpoint = request.url.path.strip("/") or "/"
        known = endpoint in POST_ROUTES or endpoint in GET_ROUTES
        t0 = time.perf_counter()
        batch = None
        try:
            if not known:
                raise HTTPError(404, f"no endpoint /{endpoint}; try POST /denoise /upscale /embed /search or "
                                "GET /models /health /metrics")
            if endpoint in GET_ROUTES:
                if request.method != "GET":
                    raise HTTPError(405, f"/{endpoint} answers GET")
                resp = await getattr(self, "_" + endpoint)()
            else:
                if request.method != "POST":
                    raise HTTPError(405, f"/{endpoint} answers POST with the image bytes as the body")
                resp, batch = await self._predict(endpoint, request)
        except HTTPError as exc:
            resp = _json(exc.status, {"error": str(exc)}, self._header_for(endpoint))
        except Exception as exc:  # noqa: BLE001 - a replica died or timed out: the ingress keeps answering
            log.exception("/%s failed", endpoint)
            resp = _json(503, {"error": f"service error: {type(exc).__name__}: {exc}"}, self._header_for(endpoint))
        self.metrics.observe(endpoint if known else "other", resp.status_code, time.perf_counter() - t0, batch)
        return resp

    def _header_for(self, endpoint: str) -> str:
        if endpoint in self.ids:
            return self.ids[endpoint]
        return ",".join(f"{k}={v}" for k, v in sorted(self.ids.items())) or "none"

    # ---- model endpoints ------------------------------------------------------------------------
    async def _read_body(self, request) -> bytes:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in BODY_TYPES and not ctype.startswith("image/"):
            raise HTTPError(400, f"unsupported content type {ctype!r}: send the image bytes as the body "
                            "(image/*, application/octet-stream; e.g. curl --data-binary @photo.jpg)")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.limits.max_bytes:
            raise HTTPError(413, f"body of {int(length)} bytes is over the limit of {self.limits.max_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limits.max_bytes:  # chunked uploads carry no Content-Length
                raise HTTPError(413, f"body is over the limit of {self.limits.max_bytes} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data:
            raise HTTPError(400, "empty body: send the image bytes (e.g. curl --data-binary @photo.jpg)")
        try:
            im = open_image(data, max_pixels=2**62)  # header only: no pixel is decoded here
        except ImageDecodeError as exc:  # Pillow names the in-memory buffer: noise for the client
            raise HTTPError(400, re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))) from None
        w, h = im.size
        if w * h > self.limits.max_pixels:
            raise HTTPError(413, f"image of {w}x{h} = {w * h} pixels is over the limit of {self.limits.max_pixels}")
        return data

    async def _upscale_handle(self, scale: str | None):
        handles = self.models.get("upscale") or []
        if self.scales is None:
            infos = await asyncio.gather(*(h.describe.remote() for h in handles))
            self.scales = {int(i["scale"]): h for i, h in zip(infos, handles)}
        if scale is None:
            if len(self.scales) == 1:
                return next(iter(self.scales.values()))
            raise HTTPError(400, f"several upscale models are served: pass ?scale= one of {sorted(self.scales)}")
        if not scale.isdigit() or int(scale) not in self.scales:
            raise HTTPError(400, f"no upscale model for scale {scale!r}; served scales: {sorted(self.scales)}")
        return self.scales[int(scale)]

    async def _predict(self, endpoint: str, request):
        if not self.models.get(endpoint):
            raise HTTPError(404, f"/{endpoint} is not served: start `aeflow api` with a model for it")
        q = request.query_params
        handle = (await self._upscale_handle(q.get("scale"))) if endpoint == "upscale" else self.models[endpoint][0]
        if endpoint not in self.ids:
            self.ids[endpoint] = (await handle.describe.remote())["model"]
        k = q.get("k", "10")
        if endpoint == "search" and (not k.isdigit() or not 1 <= int(k) <= MAX_K):
            raise HTTPError(400, f"k must be an integer from 1 to {MAX_K}, not {k!r}")
        accept = request.headers.get("accept", "")
        vec_format = q.get("format") or ("f32" if "application/octet-stream" in accept
                                         else "npy" if "application/x-npy" in accept else "json")
        if endpoint == "embed" and vec_format not in ("json", "npy", "f32"):
            raise HTTPError(400, f"format must be json, npy or f32, not {vec_format!r}")
        data = await self._read_body(request)
        res = await handle.infer.remote(data, output_format(accept) if endpoint in IMAGE_ROUTES else None, int(k))
        self.ids[endpoint] = res["model"]
        if res["status"] != 200:
            raise HTTPError(res["status"], res["error"])
        return self._answer(endpoint, res, vec_format), res.get("batch")

    def _answer(self, endpoint: str, res: dict, vec_format: str):
        from starlette.responses import Response

        model = res["model"]
        if endpoint in IMAGE_ROUTES:
            return Response(res["body"], media_type=SUFFIX_MEDIA[res["format"]], headers={MODEL_HEADER: model})
        if endpoint == "search":
            return _json(200, {"model": model, "results": res["results"]}, model)
        v = np.asarray(res["vector"], dtype="<f4")
        if vec_format == "f32":  # raw float32, little-endian
            return Response(v.tobytes(), media_type="application/octet-stream",
                            headers={MODEL_HEADER: model, "X-Aeflow-Dim": str(v.size)})
        if vec_format == "npy":
            buf = io.BytesIO()
            np.save(buf, v)
            return Response(buf.getvalue(), media_type="application/x-npy", headers={MODEL_HEADER: model})
        return _json(200, {"model": model, "dim": int(v.size), "vector": v.tolist()}, model)

    # ---- service endpoints ----------------------------------------------------------------------
    async def _describe_all(self) -> dict:
        flat = [(kind, h) for kind, hs in self.models.items() for h in hs]
        infos = await asyncio.wait_for(asyncio.gather(*(h.describe.remote() for _, h in flat)), DESCRIBE_TIMEOUT_S)
        out: dict[str, list] = {}
        for (kind, _), info in zip(flat, infos):
            out.setdefault(kind, []).append(info)
            if kind != "upscale" or len(self.models[kind]) == 1:
                self.ids[kind] = info["model"]
        return out

    async def _models(self):
        out = await self._describe_all()
        return _json(200, out, self._header_for("models"))

    async def _health(self):
        try:
            out = await self._describe_all()
        except Exception as exc:  # noqa: BLE001
            return _json(503, {"status": "unavailable", "error": f"{type(exc).__name__}: {exc}"},
                         self._header_for("health"))
        models = {k: [i["model"] for i in v] for k, v in out.items()}
        return _json(200, {"status": "ok", "models": models}, self._header_for("health"))

    async def _metrics(self):
        from starlette.responses import Response

        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4",
                        headers={MODEL_HEADER: self._header_for("metrics")})
