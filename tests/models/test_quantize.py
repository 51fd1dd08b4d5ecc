"""models/quantize.py: the int8 graph keeps the contract and metadata, and is dropped when it loses PSNR."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import quantize
from models.export import export_onnx
from models.registry import create_model


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("upscale", "tiny", scale=2).eval()
    with torch.no_grad():  # the residual branch starts at zero: give it something to quantize
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("q")
    export_onnx(m, d / "model.onnx", name="u", version=1)
    return m, d / "model.onnx"


def test_int8_graph_keeps_contract_metadata_and_quality(upscaler, tmp_path):
    import onnxruntime as ort

    model, fp32 = upscaler
    out = tmp_path / quantize.INT8_FILE
    facts = quantize.build_int8(model, "upscale", 2, fp32, out)
    assert facts["kept"] and out.is_file()
    assert facts["recipe"]["bias_corrected"] and facts["recipe"]["kept_float"]  # the bicubic conv stays float
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = s.get_modelmeta().custom_metadata_map
    assert meta["aeflow.role"] == "image2image" and meta["aeflow.scale"] == "2" and meta["aeflow.precision"] == "int8"
    assert sum(n.op_type == "QuantizeLinear" for n in __import__("onnx").load(str(out)).graph.node) > 0
    x = np.random.default_rng(0).integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)  # dynamic N, H, W kept
    y = s.run(None, {"image": x})[0]
    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert y.shape == ref.shape == (2, 40, 56, 3) and y.dtype == np.uint8
    assert np.abs(y.astype(int) - ref).mean() < 2.0  # close to fp32, not equal
    chk = facts["check"]
    assert chk["crops"] == 36 and set(chk["delta_db"]) == {"x2"}
    assert chk["delta_db"]["x2"] >= -quantize.MAX_LOSS_DB
    assert chk["worst_delta_db"]["x2"] <= chk["median_delta_db"]["x2"]


def test_int8_graph_that_loses_psnr_is_not_kept(upscaler, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "MAX_LOSS_DB", -1.0)  # demand a 1 dB gain: no int8 graph can give it
    out = tmp_path / quantize.INT8_FILE
    facts = quantize.build_int8(upscaler[0], "upscale", 2, upscaler[1], out)
    assert not facts["kept"] and not out.exists()


def test_only_image2image_kinds(upscaler, tmp_path):
    with pytest.raises(ValueError, match="denoise and upscale"):
        quantize.build_int8(upscaler[0], "ae", 1, upscaler[1], tmp_path / "x.onnx")


@pytest.mark.parametrize("name", ["denoise", "upscale-x2"])
def test_model_from_onnx_rebuilds_the_shipped_architecture(name):
    """Shipped versions have no checkpoint: card + graph must give the same network (dilations included)."""
    import json
    from pathlib import Path

    import onnxruntime as ort

    d = Path(quantize.__file__).resolve().parent.parent / "aeflow" / "shipped" / name / "1"
    model = quantize.model_from_onnx(json.loads((d / "card.json").read_text()), d / "model.onnx")
    x = np.random.default_rng(0).integers(0, 256, (1, 32, 40, 3), dtype=np.uint8)
    ref = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.inference_mode():
        y = model(torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255))
    got = y.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(got.astype(int) - ref).max() <= 1
