"""The jobs and their defaults, read by `aeflow <job>`, the runner, the API and the Prefect flows (imports nothing)."""
from __future__ import annotations

from typing import NamedTuple


class Job(NamedTuple):
    """One batch job: the role its model must have, the model it runs without --model, inputs per batch."""

    role: str        # aeflow.role of the model's graph: image2image | encoder
    model: str       # default store spec (the CLI, the API, the flows and the runner read this one)
    batch_size: int  # one worker call; for encoders also one model call


# An encoder's input is a tiny S×S crop, so at 8 per batch the overhead (Ray round trip, manifest write, driver
# bookkeeping) outweighs the work; image2image batches hold whole images and their activations: they stay small.
JOBS = {
    "denoise": Job("image2image", "denoise", 8),
    "upscale": Job("image2image", "upscale-x2", 8),
    "embed": Job("encoder", "photo-ae", 64),  # the MNIST `ae` stays available by name
}
JOB_ROLES = {name: j.role for name, j in JOBS.items()}
DEFAULT_MODELS = {name: j.model for name, j in JOBS.items()}
DEFAULT_BATCH_SIZE = {name: j.batch_size for name, j in JOBS.items()}

# Engines of a batch job (pipeline/engines.py), chosen before it starts. auto: `ray` when a cluster is named
# (--address, $RAY_ADDRESS) or --workers is given, else `local` (in-process, every core).
RUNNERS = ("auto", "ray", "local")
DEFAULT_RUNNER = "auto"

# Which graph of the model runs. auto: on CPU the version's int8 graph (model.int8.onnx), on CUDA its fp16 graph
# (model.fp16.onnx), each built and PSNR-checked at export, when it has one, else model.onnx; fp32: always
# model.onnx; int8 / fp16: that graph or exit 2.
PRECISIONS = ("auto", "fp32", "int8", "fp16")
