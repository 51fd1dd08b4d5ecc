"""Test kit: tiny ONNX models built with onnx.helper (no torch) per docs/architecture.md, a store, test images."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _meta(kind: str, role: str, name: str, *, scale=1, input_size="", channels=3, latent_dim="",
          normalized=0, halo=0) -> dict[str, str]:
    return {"aeflow.kind": kind, "aeflow.role": role, "aeflow.scale": str(scale),
            "aeflow.input_size": str(input_size), "aeflow.channels": str(channels),
            "aeflow.latent_dim": str(latent_dim), "aeflow.normalized": str(normalized),
            "aeflow.halo": str(halo), "aeflow.name": name, "aeflow.version": "1"}


def _save(nodes, inits, inp, out, meta: dict, path: Path) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _io_image(n: str, dims):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(n, TensorProto.UINT8, dims)


def _to_float_nchw(nodes):
    from onnx import TensorProto, helper

    nodes += [helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
              helper.make_node("Transpose", ["xf"], ["x0"], perm=[0, 3, 1, 2])]
    return "x0"


def _to_uint8_nhwc(nodes, inits, src: str):
    from onnx import TensorProto, helper, numpy_helper

    inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
              numpy_helper.from_array(np.array(255, np.float32), "hi")]
    nodes += [helper.make_node("Transpose", [src], ["yt"], perm=[0, 2, 3, 1]),
              helper.make_node("Clip", ["yt", "lo", "hi"], ["yc"]),
              helper.make_node("Round", ["yc"], ["yr"]),
              helper.make_node("Cast", ["yr"], ["output"], to=TensorProto.UINT8)]


def box_blur(path: Path, layers: int = 2, name: str = "denoise") -> Path:
    """'denoise': `layers` 3x3 box blurs (zero padding), halo = layers. Sums of integers are exact in float32."""
    from onnx import helper, numpy_helper

    nodes, inits = [], [numpy_helper.from_array(np.ones((3, 1, 3, 3), np.float32), "w"),
                        numpy_helper.from_array(np.array(1 / 9, np.float32), "ninth")]
    x = _to_float_nchw(nodes)
    for i in range(layers):
        nodes += [helper.make_node("Conv", [x, "w"], [f"c{i}"], group=3, pads=[1, 1, 1, 1]),
                  helper.make_node("Mul", [f"c{i}", "ninth"], [f"b{i}"])]
        x = f"b{i}"
    _to_uint8_nhwc(nodes, inits, x)
    return _save(nodes, inits, _io_image("image", ["N", "H", "W", 3]), _io_image("output", ["N", "H", "W", 3]),
                 _meta("denoise", "image2image", name, halo=layers), path)


def dncnn(path: Path, layers: int = 5, width: int = 16, name: str = "denoise", seed: int = 0) -> Path:
    """A DnCNN-like residual denoiser (conv-ReLU stack predicting the noise), random small weights."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = _to_float_nchw(nodes)
    inp = x
    chans = [3] + [width] * (layers - 1) + [3]
    for i in range(layers):
        w = (rng.standard_normal((chans[i + 1], chans[i], 3, 3)) * 0.5 / np.sqrt(9 * chans[i])).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        x = f"c{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Sub", [inp, x], ["res"]))
    _to_uint8_nhwc(nodes, inits, "res")
    return _save(nodes, inits, _io_image("image", ["N", "H", "W", 3]), _io_image("output", ["N", "H", "W", 3]),
                 _meta("denoise", "image2image", name, halo=layers), path)


def upscale_x2(path: Path, name: str = "upscale-x2") -> Path:
    """'upscale': one 3x3 box blur (halo 1) then nearest-neighbour x2."""
    from onnx import helper, numpy_helper

    nodes, inits = [], [numpy_helper.from_array(np.ones((3, 1, 3, 3), np.float32), "w"),
                        numpy_helper.from_array(np.array(1 / 9, np.float32), "ninth"),
                        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    x = _to_float_nchw(nodes)
    nodes += [helper.make_node("Conv", [x, "w"], ["c"], group=3, pads=[1, 1, 1, 1]),
              helper.make_node("Mul", ["c", "ninth"], ["b"]),
              helper.make_node("Resize", ["b", "", "scales"], ["up"], mode="nearest")]
    _to_uint8_nhwc(nodes, inits, "up")
    return _save(nodes, inits, _io_image("image", ["N", "H", "W", 3]), _io_image("output", ["N", "H2", "W2", 3]),
                 _meta("upscale", "image2image", name, scale=2, halo=1), path)


def encoder(path: Path, size: int = 8, name: str = "ae") -> Path:
    """'encoder': S=size, C=3; 4x4 average pooling, flattened and L2-normalised (D = 3 * (size/4)^2)."""
    from onnx import TensorProto, helper, numpy_helper

    d = 3 * (size // 4) ** 2
    nodes, inits = [], [numpy_helper.from_array(np.array(1 / 255, np.float32), "s"),
                        numpy_helper.from_array(np.array(1e-3, np.float32), "eps")]
    x = _to_float_nchw(nodes)
    nodes += [helper.make_node("Mul", [x, "s"], ["xs"]),
              helper.make_node("Add", ["xs", "eps"], ["xe"]),  # never an all-zero vector
              helper.make_node("AveragePool", ["xe"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
              helper.make_node("Flatten", ["p"], ["f"], axis=1),
              helper.make_node("LpNormalization", ["f"], ["embedding"], axis=1, p=2)]
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", d])
    return _save(nodes, inits, _io_image("image", ["N", size, size, 3]), out,
                 _meta("ae", "encoder", name, input_size=size, latent_dim=d, normalized=1), path)


def register(store_root: Path, name: str, onnx_file: Path, kind: str):
    """Register a built model.onnx in the store at store_root; returns the ModelRef."""
    import shutil
    import tempfile

    from aeflow.store import ModelStore

    with tempfile.TemporaryDirectory() as d:
        shutil.copy(onnx_file, Path(d) / "model.onnx")
        return ModelStore(store_root).register(name, d, {"kind": kind})


def build_store(root: Path) -> Path:
    """A store with denoise (2 box blurs), denoise-cnn (DnCNN-like), upscale-x2 and ae (S=8)."""
    build = root.parent / (root.name + "-build")
    register(root, "denoise", box_blur(build / "blur.onnx"), "denoise")
    register(root, "denoise-cnn", dncnn(build / "dncnn.onnx", name="denoise-cnn"), "denoise")
    register(root, "upscale-x2", upscale_x2(build / "up.onnx"), "upscale")
    register(root, "ae", encoder(build / "enc.onnx"), "ae")
    return root


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth deterministic uint8 HxWx3 image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([120 + 90 * np.sin(xx / (5 + c + rng.uniform(0, 4))) * np.cos(yy / (6 + 2 * c))
                    for c in range(3)], axis=-1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def save(path: Path, arr: np.ndarray, **params) -> Path:
    """Save arr with Pillow (format from the suffix), creating folders."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **params)
    return path
