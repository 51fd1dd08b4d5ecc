"""Which of a stored version's graphs (fp32, int8, fp16) runs for a device: one rule for the batch jobs and the API."""
from __future__ import annotations

import logging

from aeflow.store import FP16_FILE, INT8_FILE, MODEL_FILE
from pipeline.predictor import JobConfigError

log = logging.getLogger(__name__)

GRAPHS = {"fp32": MODEL_FILE, "int8": INT8_FILE, "fp16": FP16_FILE}


def pick_graph(ref, device: str, precision: str = "auto") -> tuple[str, str]:
    """(precision, file name) of the graph of `ref` to run on `device` ("cpu" or "cuda") for `precision`.

    auto: the faster graph of the device (int8 on CPU, fp16 on CUDA) where the version ships one that passed its
    quality gate, else fp32. An explicit int8/fp16 the version lacks is a JobConfigError.
    """
    files = ref.card.get("files", {})
    if precision in ("int8", "fp16") and GRAPHS[precision] not in files:
        raise JobConfigError(f"model {ref.id} has no {precision} graph ({GRAPHS[precision]}: built at export for "
                             "denoise/upscale models when it keeps their PSNR); use --precision auto or fp32")
    if precision == "auto":
        fast = "fp16" if device == "cuda" else "int8"
        precision = fast if GRAPHS[fast] in files else "fp32"
    if precision == "fp16" and device == "cpu":
        log.warning("--precision fp16 on CPU: onnxruntime runs float16 graphs slowly there; fp32 or int8 is faster")
    return precision, GRAPHS[precision]
