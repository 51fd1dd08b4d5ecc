"""The upscale x2 graph in onnxruntime: bicubic as Resize (F.interpolate) vs as conv + PixelShuffle, same weights.

    .venv/bin/python bench/upscale_graph.py     # untrained default-size x2 model, 4 x 256², 2 threads, best of 7
"""
from __future__ import annotations

import sys
import tempfile
import time
import types
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(reps: int = 7, batch: int = 4, size: int = 256, threads: int = 2) -> dict:
    """Export both forms, check they agree, time them interleaved; print and return ms per image."""
    import numpy as np
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    from models.export import export_onnx
    from models.registry import create_model

    torch.manual_seed(0)
    m = create_model("upscale", "small", scale=2).eval()
    with torch.no_grad():
        for p in m.parameters():  # the residual branch starts at zero: give it weights
            p.add_(0.01 * torch.randn_like(p))
    d = Path(tempfile.mkdtemp())
    export_onnx(m, d / "conv" / "model.onnx", name="u", version=1)
    m.bicubic = types.MethodType(
        lambda self, x: F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False), m)
    export_onnx(m, d / "resize" / "model.onnx", name="u", version=1)
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

    def session(path: Path):
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
        return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])

    sessions = {k: session(d / k / "model.onnx") for k in ("conv", "resize")}
    outs = {k: s.run(None, {s.get_inputs()[0].name: x})[0].astype(int) for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(reps):  # interleaved, so load changes hit both alike
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            times[k].append(time.perf_counter() - t0)
    res = {"max_uint8_diff": int(np.abs(outs["conv"] - outs["resize"]).max()),
           **{f"{k}_ms_per_image": round(min(v) / batch * 1000, 1) for k, v in times.items()}}
    res["speedup"] = round(res["resize_ms_per_image"] / res["conv_ms_per_image"], 2)
    print(res)
    return res


if __name__ == "__main__":
    main()
