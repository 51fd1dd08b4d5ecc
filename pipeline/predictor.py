"""The predictor: one onnxruntime session per worker, opened once, `__call__(batch) -> batch` on numpy arrays."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from aeflow.errors import UsageError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class JobConfigError(UsageError):
    """A job that cannot start as configured (bad device, wrong model role, bad folders): CLI exit 2."""


@dataclass
class ModelInfo:
    """What the pipeline needs from the ONNX metadata (docs/architecture.md, 'ONNX contract')."""

    role: str  # image2image | encoder | decoder
    kind: str = ""
    scale: int = 1
    input_size: int = 0  # S for encoders; 0 = any size
    channels: int = 3
    halo: int = 0
    normalized: bool = False
    fit: str = "crop"  # encoders: how the S×S input is made (aeflow.imageio.fit_square)
    name: str = ""
    version: str = ""

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ModelInfo":
        """Parse `aeflow.*` metadata strings; missing numbers take the defaults."""
        def num(key: str, default: int) -> int:
            v = meta.get(f"aeflow.{key}", "")
            return int(v) if v.strip() else default

        role = meta.get("aeflow.role", "")
        if role not in ("image2image", "encoder", "decoder"):
            raise JobConfigError(f"model metadata aeflow.role is {role!r}: not an aeflow model "
                                 "(expected image2image, encoder or decoder)")
        return cls(role=role, kind=meta.get("aeflow.kind", ""), scale=num("scale", 1),
                   input_size=num("input_size", 0), channels=num("channels", 3), halo=num("halo", 0),
                   normalized=meta.get("aeflow.normalized", "0") == "1", fit=meta.get("aeflow.fit") or "crop",
                   name=meta.get("aeflow.name", ""),
                   version=meta.get("aeflow.version", ""))


def resolve_device(device: str) -> str:
    """Map --device to 'cuda' or 'cpu' for this machine's onnxruntime; 'cuda' without CUDA is a config error."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise JobConfigError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    has_cuda = CUDA in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise JobConfigError("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                             f"(available: {', '.join(ort.get_available_providers())}); "
                             "install onnxruntime-gpu or use --device cpu/auto")
    if device == "auto":
        if not has_cuda:
            log.info("no CUDA provider in this onnxruntime build: running on CPU")
        return "cuda" if has_cuda else "cpu"
    return device


def session_providers(device: str) -> list:
    """onnxruntime providers (with options) for a resolved device."""
    if device == "cuda":
        # HEURISTIC: EXHAUSTIVE re-benchmarks every new input shape, and batch jobs see many shapes
        return [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    return [CPU]


def session_options(threads: int):
    """onnxruntime SessionOptions for a worker with `threads` cores (the batch jobs, the API, the bench floor)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # onnxruntime ignores OMP_NUM_THREADS: without this, N workers on a node oversubscribe its cores
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    # After each run, idle intra-op threads spin for a while by default, holding a core that the worker's
    # decode threads need: embedding 1000 photos (decode-bound) took 0.67-0.76 s without spinning against
    # 0.72-1.09 s with it; inference-bound jobs measured the same either way (docs/benchmarks.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


IO_BINDING_ENV = "AEFLOW_IO_BINDING"  # auto (default: on CUDA) | 1 | 0: the GPU benchmark measures both


def io_binding_wanted(device: str) -> bool:
    """Whether a predictor on `device` binds its input and output buffers ($AEFLOW_IO_BINDING, default: on CUDA)."""
    import os

    v = os.environ.get(IO_BINDING_ENV, "auto").strip().lower()
    if v not in ("auto", "1", "0"):
        raise JobConfigError(f"${IO_BINDING_ENV} must be auto, 1 or 0, not {v!r}")
    return device == "cuda" if v == "auto" else v == "1"


class Predictor:
    """Runs one ONNX model; the InferenceSession is created once, here, and reused for every batch."""

    def __init__(self, model_path: str, device: str = "cpu", threads: int = 1, io_binding: bool | None = None):
        import onnxruntime as ort

        if device == "cuda" and hasattr(ort, "preload_dlls"):
            try:  # the CUDA 13 wheels find their CUDA libraries only when preloaded
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - a failed preload shows up as the fallback below
                log.debug("onnxruntime.preload_dlls failed: %s", exc)
        self.session = ort.InferenceSession(str(model_path), sess_options=session_options(threads),
                                            providers=session_providers(device))
        self.providers = self.session.get_providers()
        if device == "cuda" and self.providers[0] != CUDA:
            log.warning("CUDA was requested but onnxruntime fell back to %s for %s", self.providers[0], model_path)
        self.device = "cuda" if self.providers[0] == CUDA else "cpu"
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        # IO binding: onnxruntime writes the output into a buffer on the device that is copied back once, rather
        # than allocating and synchronising per run; on CPU the plain run() is the same work
        self.io_binding = io_binding_wanted(self.device) if io_binding is None else bool(io_binding)

    def __call__(self, batch: dict) -> dict:
        """{'image': uint8 [N,H,W,C]} -> {'output': uint8 [N,sH,sW,3]} or {'embedding': float32 [N,D]}."""
        x = np.ascontiguousarray(batch["image"], dtype=np.uint8)
        if self.io_binding:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, x)
            binding.bind_output(self.output_name, self.device)
            self.session.run_with_iobinding(binding)
            y = binding.copy_outputs_to_cpu()[0]
        else:
            y = self.session.run([self.output_name], {self.input_name: x})[0]
        key = "embedding" if self.info.role == "encoder" else "output"
        return {key: y}
