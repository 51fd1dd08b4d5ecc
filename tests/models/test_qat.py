"""models/qat.py: equalisation keeps the function, fine-tuning through fake int8 brings int8 closer to fp32."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import qat, quantize
from models.export import export_onnx
from models.registry import create_model


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("denoise", "tiny", max_dilation=2).eval()
    with torch.no_grad():  # random weights, made larger: a residual (and int8 error) far from zero
        for c in qat.conv_stack(m):
            c.weight.mul_(2.0)
            c.bias.add_(0.05 * torch.randn_like(c.bias))
    d = tmp_path_factory.mktemp("qat")
    export_onnx(m, d / "model.onnx", name="d", version=1)
    return m, d / "model.onnx"


def _calib():
    return quantize._batches(quantize.crops("denoise", 1, seed=0, n=4, size=48))


def test_equalize_keeps_the_output_and_evens_the_channel_ranges(denoiser):
    model, _ = denoiser
    calib = _calib()
    eq = qat.equalize(model, calib, alpha=1.0)
    x = torch.from_numpy(calib[0]).permute(0, 3, 1, 2).float().div(255)
    with torch.inference_mode():
        assert torch.allclose(eq(x), model(x), atol=1e-5)

    def spread(m):  # max/min of the per-channel input ranges of the second conv
        r = qat._quantile(qat._inputs(m, qat.conv_stack(m), calib)[1], 0.9999, dim=1).clamp(min=1e-6)
        return float(r.max() / r.min())
    assert spread(eq) < spread(model) / 2
    assert qat.equalize(model, calib, alpha=0.0) is not model  # a copy, even when nothing changes


def test_finetuned_int8_graph_is_closer_to_fp32_and_uses_the_learned_steps(denoiser, tmp_path):
    import onnxruntime as ort

    model, fp32 = denoiser
    calib = _calib()
    keep = quantize._keep_float(model, fp32)
    assert len(keep) == 1 and keep[0].endswith(f"/net.{len(model.net) - 1}/Conv")  # the output conv
    ptq = tmp_path / "ptq.onnx"
    quantize._quantize(fp32, ptq, calib, keep)
    out = tmp_path / "qat.onnx"
    recipe = quantize._qat_int8(model, fp32, out, calib, keep, qat.QatSettings(steps=60, crop=32, batch=4),
                                progress=False)
    facts = recipe["qat"]
    assert facts["steps"] == 60 and facts["rmse_levels_last"] < facts["rmse_levels_first"]
    assert "fixed during quantization-aware fine-tuning" in recipe["calibration"]

    x = np.stack([a for a, _ in quantize.crops("denoise", 1, seed=5, n=4, size=48)])  # other noisy crops

    def run(p):
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0].astype(float)
    ref = run(fp32)
    err_qat, err_ptq = np.sqrt(((run(out) - ref) ** 2).mean()), np.sqrt(((run(ptq) - ref) ** 2).mean())
    assert err_qat < 0.9 * err_ptq  # measured: 0.52 against 0.68 grey levels RMS

    # every quantized activation has the step the fine-tuning saw, not one calibrated afresh
    got = _q_steps(out)
    assert got.keys() == facts["activation_steps"].keys() and len(got) == len(qat.conv_stack(model))
    for t, (scale, zero) in facts["activation_steps"].items():
        assert got[t][0] == pytest.approx(scale, rel=1e-6) and got[t][1] == zero == 0  # ReLU inputs: from 0
    assert facts["equalize"] in (0.0, 0.5, 1.0) and facts["equalize_errors"][str(facts["equalize"])] == min(
        facts["equalize_errors"].values())


def _q_steps(path) -> dict:
    """{tensor: (scale, zero point)} of every QuantizeLinear of a QDQ graph."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    return {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]])) for n in g.node
            if n.op_type == "QuantizeLinear"}


def test_unet_finetuning_quantizes_signed_skips_with_their_zero_point(tmp_path):
    """The U-Net is no ReLU stack: no equalisation, and its skip sums are signed (uint8 with a zero point)."""
    torch.manual_seed(0)
    m = create_model("denoise", arch="unet", features=8).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fp32 = tmp_path / "model.onnx"
    export_onnx(m, fp32, name="u", version=1)
    calib = _calib()
    keep = quantize._keep_float(m, fp32)
    assert len(keep) == len(m.float_convs) == 7  # the full-resolution convs
    ptq = tmp_path / "ptq.onnx"
    quantize._quantize(fp32, ptq, calib, keep)
    points = quantize.quant_points(fp32, ptq)
    assert {w for _, w, _ in points} == {"in", "out"} and len(points) == len(_q_steps(ptq))
    out = tmp_path / "qat.onnx"
    recipe = quantize._qat_int8(m, fp32, out, calib, keep, qat.QatSettings(steps=30, crop=32, batch=2),
                                progress=False)
    facts = recipe["qat"]
    assert facts["equalize"] == 0.0 and list(facts["equalize_errors"]) == ["0.0"]
    got = _q_steps(out)
    assert got.keys() == facts["activation_steps"].keys()
    zeros = [z for _, z in facts["activation_steps"].values()]
    assert any(z > 0 for z in zeros) and any(z == 0 for z in zeros)  # signed sums and ReLU outputs
    for t, (scale, zero) in facts["activation_steps"].items():
        assert got[t] == (pytest.approx(scale, rel=1e-6), zero)


def test_build_int8_falls_back_to_finetuning_and_records_both(denoiser, tmp_path, monkeypatch):
    model, fp32 = denoiser
    monkeypatch.setattr(quantize, "MAX_LOSS_DB", -1.0)  # no recipe can gain 1 dB: both run, none is kept
    out = tmp_path / quantize.INT8_FILE
    facts = quantize.build_int8(model, "denoise", 1, fp32, out, qat=qat.QatSettings(steps=20, crop=32, batch=2))
    assert not facts["kept"] and not out.exists()
    assert "qat" in facts["recipe"] and "check" in facts["recipe"]["post_training_only"]
    assert set(facts["check"]["delta_db"]) == {"sigma15", "sigma25", "sigma50"}


def test_upscaler_finetunes_on_downscaled_crops(tmp_path):
    torch.manual_seed(0)
    up = create_model("upscale", "tiny", scale=2, arch="resnet").eval()
    with torch.no_grad():
        for p in up.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fp32 = tmp_path / "model.onnx"
    export_onnx(up, fp32, name="u", version=1)
    calib = quantize._batches(quantize.crops("upscale", 2, seed=0, n=4, size=48))
    recipe = quantize._qat_int8(up, fp32, tmp_path / "q.onnx", calib, quantize._keep_float(up, fp32),
                                qat.QatSettings(steps=10, crop=32, batch=2), progress=False, scale=2)
    assert recipe["qat"]["data"].endswith("bicubic-downscaled x2") and (tmp_path / "q.onnx").is_file()


def test_equalisation_is_for_conv_relu_stacks_only(tmp_path):
    up = create_model("upscale", "tiny", scale=2)
    with pytest.raises(ValueError, match="conv/ReLU stack"):
        qat.conv_stack(up)
    with pytest.raises(ValueError, match="bad QatSettings"):
        qat.QatSettings(steps=-1)


@pytest.mark.parametrize("arch", ["espcn", "resnet"])
def test_upscaler_int8_keeps_only_its_fixed_bicubic_filter_in_float(tmp_path, arch):
    import onnx

    up = create_model("upscale", "tiny", scale=2, arch=arch).eval()
    export_onnx(up, tmp_path / "m.onnx", name="u", version=1)
    (keep,) = quantize._keep_float(up, tmp_path / "m.onnx")
    node = next(n for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if n.name == keep)
    assert not node.input[1].startswith("core.model.")  # the bicubic taps, a constant, not a learned weight
