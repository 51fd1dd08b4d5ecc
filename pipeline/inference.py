"""Per-image model logic shared by the batch worker and the online service: decode, batch or tile, embed, encode.

One code path, so `aeflow api` answers with exactly the bytes the batch job writes for the same input:
the same decode (decode_for: one open, at decode_side's scale, with the file's ICC profile), the same
shape buckets and tiling for image2image models, the same centre crop for encoders, the same encoder
(pipeline.writer.encode_image).
"""
from __future__ import annotations

import os

import numpy as np

from aeflow.imageio import DEFAULT_MAX_PIXELS, DecodedImage, decode_with_header, fit_square
from pipeline.predictor import ModelInfo, Predictor
from pipeline.reader import read_bytes
from pipeline.tiling import predict_tiled

# Pillow format name -> the file suffix pipeline.writer.encode_image understands (MPO: camera JPEGs)
SUFFIX_OF_FORMAT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
                    "GIF": ".gif"}


def decode_side(info: ModelInfo) -> int | None:
    """The min_side inputs are decoded for (aeflow.imageio): an encoder's S, None (every pixel) for image2image."""
    # encoders only see an S×S centre crop, so a JPEG may decode at 1/2..1/8 scale; image2image needs every pixel
    return (info.input_size or None) if info.role == "encoder" else None


def decode_for(source: bytes | str | os.PathLike, info: ModelInfo,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """The one decode of a model's input, from a file (the batch job, search) or bytes (the API).

    One open of the bytes (pixels, ICC profile, format, full size); an encoder's input at decode_side's
    scale and in its channels, an image2image model's in RGB with every pixel. Raises ImageDecodeError.
    """
    data = source if isinstance(source, bytes) else read_bytes(os.fspath(source))
    channels = info.channels if info.role == "encoder" else 3
    return decode_with_header(data, channels=channels, max_pixels=max_pixels, min_side=decode_side(info))


# Pixels per model call on CPU (a few small images, or one tile with its halo): bounds a worker's memory by
# the tile, not by the batch or the image
CPU_PIXELS_PER_CALL = 640 * 640


def image2image(predictor: Predictor, images: list[np.ndarray], tile: int = 512,
                batch_size: int = 8) -> list[np.ndarray | Exception]:
    """Run an image2image model on each image, in order; a failure is returned in its slot, never raised.

    Images whose sides are all <= tile are batched by exact shape (one ONNX call per shape and chunk of
    batch_size, on CPU at most CPU_PIXELS_PER_CALL pixels); larger ones run in overlapping tiles
    (pipeline.tiling), on CPU one tile per call. A failed chunk is retried image by
    image, so one bad input fails alone. This is the batch worker's bucketing, kept identical.
    """
    info = predictor.info

    def predict(x: np.ndarray) -> np.ndarray:
        return predictor({"image": x})["output"]

    def per_call(pixels: int) -> int:
        # On CPU a call's activations live in the worker's own memory: eight 568² tiles of the shipped
        # denoiser took 2.1 GB more than one, and ran no faster (docs/benchmarks.md); GPUs keep the batch
        if predictor.device == "cuda":
            return batch_size
        return max(1, min(batch_size, CPU_PIXELS_PER_CALL // max(1, pixels)))

    outs: list[np.ndarray | Exception | None] = [None] * len(images)
    buckets: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        buckets.setdefault((h, w) if max(h, w) <= tile else ("tiled", i), []).append(i)
    for key, idx in buckets.items():
        h, w = images[idx[0]].shape[:2]
        step = 1 if key[0] == "tiled" else per_call(h * w)
        for k in range(0, len(idx), step):
            chunk = idx[k:k + step]
            try:
                if key[0] == "tiled":
                    tiles = per_call((tile + 2 * info.halo) ** 2)
                    outs[chunk[0]] = predict_tiled(predict, images[chunk[0]], tile, info.halo, info.scale, tiles)
                else:
                    for i, y in zip(chunk, predict(np.stack([images[i] for i in chunk]))):
                        outs[i] = y
            except Exception:  # noqa: BLE001 - retried one by one below
                pass
            for i in chunk:
                if outs[i] is None:
                    try:
                        outs[i] = predict_tiled(predict, images[i], tile, info.halo, info.scale, 1)
                    except Exception as exc:  # noqa: BLE001 - this input's own failure
                        outs[i] = exc
    return outs  # type: ignore[return-value]


def encoder_input(image: np.ndarray, info: ModelInfo) -> np.ndarray:
    """What an encoder gets for a decoded image: S×S by the model's own fit (the function its training used)."""
    return fit_square(image, info.input_size, info.fit)


def embed(predictor: Predictor, images: list[np.ndarray]) -> list[np.ndarray | Exception]:
    """Embed decoded (uncropped) images, in order, float32 [D] each; a failure is returned in its slot."""
    info = predictor.info
    outs: list[np.ndarray | Exception | None] = [None] * len(images)
    ready: list[int] = []
    xs = []
    for i, im in enumerate(images):
        try:
            xs.append(encoder_input(im, info))
            ready.append(i)
        except Exception as exc:  # noqa: BLE001
            outs[i] = exc
    if ready:
        try:
            vecs = predictor({"image": np.stack(xs)})["embedding"]
            for i, v in zip(ready, vecs):
                outs[i] = np.asarray(v, dtype=np.float32)
        except Exception:  # noqa: BLE001 - retry one by one so a bad input fails alone
            for i, x in zip(ready, xs):
                try:
                    outs[i] = np.asarray(predictor({"image": x[None]})["embedding"][0], dtype=np.float32)
                except Exception as exc:  # noqa: BLE001
                    outs[i] = exc
    return outs  # type: ignore[return-value]
