"""Model-only throughput on an in-memory batch: onnxruntime (numpy in/out, and IO binding on CUDA), torch fp32/fp16."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench._models import BenchModel
from bench._modes import ort_session


def _rate(fn, n_images: int, repeats: int) -> float:
    fn()  # warm-up: first-run allocations, CUDA kernels/algorithm choice
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return round(n_images * repeats / (time.perf_counter() - t0), 2)


def model_only(bm: BenchModel, size: int, device: str, threads: int, batch: int, repeats: int) -> dict:
    """images/s of the bare model on one uint8 batch of size×size (S×S for encoders), no file IO."""
    import torch

    s = bm.input_size or size
    x = np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    sess = ort_session(Path(bm.onnx), device, threads)
    name = sess.get_inputs()[0].name
    out: dict = {"job": bm.job, "size": s, "batch": batch, "device": device, "providers": sess.get_providers()}
    out["ort_numpy"] = _rate(lambda: sess.run(None, {name: x}), batch, repeats)
    if device == "cuda":
        import onnxruntime as ort

        # IO binding: input copied to the GPU once, output left there: the model without host transfers
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding = sess.io_binding()
        binding.bind_ortvalue_input(name, x_dev)
        binding.bind_output(sess.get_outputs()[0].name, "cuda")
        out["ort_iobinding"] = _rate(lambda: sess.run_with_iobinding(binding), batch, repeats)

    torch.set_num_threads(threads)
    model = bm.torch.to(device).eval()
    t = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div(255)
    call = model.encode if bm.input_size else model

    def run(m, inp):
        def go():
            with torch.inference_mode():
                m(inp)
            if device == "cuda":
                torch.cuda.synchronize()
        return go

    out["torch_fp32"] = _rate(run(call, t), batch, repeats)
    if device == "cuda":
        half = bm.torch.half().to(memory_format=torch.channels_last)
        th = t.half().contiguous(memory_format=torch.channels_last)
        out["torch_fp16_channels_last"] = _rate(run(half.encode if bm.input_size else half, th), batch, repeats)
        bm.torch.float()
    model.cpu()
    return out
