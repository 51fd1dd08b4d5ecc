"""ONNX export of every registered model: contract I/O, metadata, one self-contained file, parity, dynamic axes."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import models.export as export_mod
from models.export import Decoder, Encoder, ExportError, Image2Image, export_onnx
from models.registry import create_model, list_models

META_KEYS = {"aeflow.kind", "aeflow.role", "aeflow.scale", "aeflow.input_size", "aeflow.channels",
             "aeflow.latent_dim", "aeflow.normalized", "aeflow.halo", "aeflow.name", "aeflow.version"}

CASES = [(k, {}) for k in list_models()] + [("upscale", {"scale": 4}), ("denoise", {"channels": 1}),
                                             ("ae", {"channels": 1, "input_size": 28})]


def _tiny(kind, cfg):
    torch.manual_seed(0)
    model = create_model(kind, size="tiny", **cfg)
    with torch.no_grad():  # random, non-trivial weights (the upscaler's last conv starts at zero)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _meta(sess):
    return sess.get_modelmeta().custom_metadata_map


@pytest.mark.parametrize("kind,cfg", CASES, ids=[f"{k}{''.join(f'-{v}' for v in c.values())}" for k, c in CASES])
def test_export_contract_and_parity(kind, cfg, tmp_path):
    model = _tiny(kind, cfg)
    model.train()
    out_dir = tmp_path / "v1"
    res = export_onnx(model, out_dir / "model.onnx", name=f"my-{kind}", version=7)
    assert model.training  # the caller's model is left as it was

    files = sorted(p.name for p in out_dir.iterdir())
    encoder = hasattr(model, "encode")
    assert files == (["decoder.onnx", "model.onnx"] if encoder else ["model.onnx"])  # no .onnx.data, no temp
    assert res["opset"] >= 17 and set(res["files"]) == set(files)
    assert len(res["parity"]["sizes"]) == 2

    sess = _session(out_dir / "model.onnx")
    meta = _meta(sess)
    assert set(meta) >= META_KEYS and meta == res["metadata"]
    assert meta["aeflow.kind"] == kind and meta["aeflow.name"] == f"my-{kind}" and meta["aeflow.version"] == "7"
    assert meta["aeflow.halo"] == str(model.halo)
    cfg_ = model.cfg
    rng = np.random.default_rng(5)
    if not encoder:
        s = getattr(cfg_, "scale", 1)
        assert meta["aeflow.role"] == "image2image" and meta["aeflow.scale"] == str(s)
        assert meta["aeflow.input_size"] == "" and meta["aeflow.latent_dim"] == "" and meta["aeflow.channels"] == "3"
        assert res["parity"]["max_abs_diff_uint8"] <= 1 and res["parity"]["max_abs_diff"] < 1e-4
        assert any(h != w for _, h, w in res["parity"]["sizes"])  # one non-square size
        assert [i.name for i in sess.get_inputs()] == ["image"] and [o.name for o in sess.get_outputs()] == ["output"]
        # a third size, batch 3 and odd H, W: the axes are really dynamic
        a = rng.integers(0, 256, (3, 29, 18, 3), dtype=np.uint8)
        got = sess.run(None, {"image": a})[0]
        with torch.no_grad():
            want = Image2Image(model.eval())(torch.from_numpy(a)).numpy()
        assert got.dtype == np.uint8 and got.shape == (3, 29 * s, 18 * s, 3) == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
        return

    S, C, D = cfg_.input_size, cfg_.channels, cfg_.latent_dim
    normalized = kind in ("ae", "photo-ae")
    assert meta["aeflow.role"] == "encoder" and meta["aeflow.input_size"] == str(S)
    assert meta["aeflow.channels"] == str(C) and meta["aeflow.latent_dim"] == str(D)
    assert meta["aeflow.normalized"] == ("1" if normalized else "0")
    assert res["inputs"] == [{"name": "image", "dtype": "uint8", "shape": ["batch", S, S, C]}]
    assert res["outputs"] == [{"name": "embedding", "dtype": "float32", "shape": ["batch", D]}]
    assert res["parity"]["max_abs_diff"] < 1e-4
    a = rng.integers(0, 256, (5, S, S, C), dtype=np.uint8)
    emb = sess.run(None, {"image": a})[0]
    with torch.no_grad():
        want = Encoder(model.eval(), normalized)(torch.from_numpy(a)).numpy()
        z = model.encode(torch.from_numpy(a).permute(0, 3, 1, 2) / 255.0)
        if kind in ("vae", "conv-vae"):  # a VAE's embedding is its mean
            np.testing.assert_allclose(want, z[0])
        elif kind == "aae":  # the aae's is its code, unnormalised (the prior gives it a scale)
            np.testing.assert_allclose(want, z)
        elif kind == "photo-ae":  # already unit length, and squashed (not cropped) to S×S by the pipeline
            np.testing.assert_allclose(want, z, atol=1e-6)
            assert meta["aeflow.fit"] == "squash"
    assert emb.shape == (5, D) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, want, atol=1e-5)
    if normalized:
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    dsess = _session(out_dir / "decoder.onnx")
    dmeta = _meta(dsess)
    assert set(dmeta) >= META_KEYS and dmeta["aeflow.role"] == "decoder" and dmeta["aeflow.latent_dim"] == str(D)
    assert res["decoder"]["parity"]["max_abs_diff_uint8"] <= 1
    z = rng.standard_normal((4, D)).astype(np.float32)
    img = dsess.run(None, {"latent": z})[0]
    with torch.no_grad():
        dwant = Decoder(model)(torch.from_numpy(z)).numpy()
    assert img.dtype == np.uint8 and img.shape == (4, S, S, C)
    assert np.abs(img.astype(int) - dwant.astype(int)).max() <= 1


def test_dynamo_exporter_gives_the_same_contract(tmp_path):
    model = _tiny("upscale", {})
    res = export_onnx(model, tmp_path / "model.onnx", name="up", version=1, dynamo=True)
    assert res["exporter"] == "dynamo" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert res["outputs"][0]["shape"] == ["batch", "out_height", "out_width", 3]
    out = _session(tmp_path / "model.onnx").run(None, {"image": np.zeros((3, 9, 14, 3), np.uint8)})[0]
    assert out.shape == (3, 18, 28, 3)


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "FLOAT_RTOL", -1.0)  # any difference, even 0, now fails
    with pytest.raises(ExportError, match="float outputs differ"):
        export_onnx(_tiny("vae", {}), tmp_path / "model.onnx", name="vae", version=1)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="encoders only"):
        export_onnx(_tiny("denoise", {}), tmp_path / "m.onnx", name="d", version=1, normalize=True)
    with pytest.raises(ValueError, match="28x28 images only"):
        export_onnx(_tiny("vae", {}), tmp_path / "m.onnx", name="v", version=1, parity_sizes=[(1, 20, 28)])
    with pytest.raises(ValueError, match="opset"):
        export_onnx(_tiny("denoise", {}), tmp_path / "m.onnx", name="d", version=1, opset=13)
    assert list(tmp_path.iterdir()) == []


def test_mirror_photo_ae_gives_an_image_and_its_mirror_one_code(tmp_path):
    """mirror=True: the exported graph itself sums both orientations, so a mirrored copy gets the same embedding."""
    torch.manual_seed(0)
    model = create_model("photo-ae", "tiny", mirror=True).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(model.encode(x), model.encode(x.flip(3)), atol=1e-6)
        plain = create_model("photo-ae", "tiny")
        plain.load_state_dict(model.state_dict())  # same weights: only the mirror setting differs
        assert not torch.allclose(plain.eval().encode(x), plain.encode(x.flip(3)), atol=1e-3)
    export_onnx(model, tmp_path / "model.onnx", name="p", version=1)
    a = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    sess = _session(tmp_path / "model.onnx")
    e, m = (sess.run(None, {"image": b})[0] for b in (a, np.ascontiguousarray(a[:, :, ::-1])))
    np.testing.assert_allclose(e, m, atol=1e-5)
