"""pipeline.inference: how many pixels one model call holds (a worker's memory is bounded by the tile)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import inference
from pipeline.predictor import ModelInfo


class _Recorder:
    """A stand-in predictor: the identity model, recording each call's input shape."""

    def __init__(self, device: str, halo: int = 4):
        self.device = device
        self.info = ModelInfo.from_metadata({"aeflow.role": "image2image", "aeflow.halo": str(halo),
                                             "aeflow.scale": "1"})
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, batch: dict) -> dict:
        self.calls.append(batch["image"].shape)
        return {"output": batch["image"].copy()}


def _images(n: int, h: int, w: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_cpu_runs_one_tile_per_call_of_a_large_image():
    pred = _Recorder("cpu")
    (img,) = _images(1, 1100, 1300)
    (out,) = inference.image2image(pred, [img], tile=512, batch_size=8)
    assert np.array_equal(out, img)  # stitched back whole
    assert len(pred.calls) == 9 and all(c[0] == 1 for c in pred.calls)  # 3x3 tiles, one per call


@pytest.mark.parametrize("side, per_call", [(64, 8), (256, 6), (512, 1)])
def test_cpu_batches_small_images_up_to_a_pixel_budget(side, per_call):
    pred = _Recorder("cpu")
    imgs = _images(8, side, side)
    outs = inference.image2image(pred, imgs, tile=512, batch_size=8)
    assert all(np.array_equal(o, i) for o, i in zip(outs, imgs))
    assert max(c[0] for c in pred.calls) == per_call
    assert max(c[0] * c[1] * c[2] for c in pred.calls) <= max(inference.CPU_PIXELS_PER_CALL, side * side)


def test_gpu_keeps_the_batch():
    pred = _Recorder("cuda")  # a GPU's activations are not in the worker's memory
    inference.image2image(pred, _images(8, 512, 512), tile=512, batch_size=8)
    assert [c[0] for c in pred.calls] == [8]
