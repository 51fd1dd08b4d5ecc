"""Tests for models/build.py: export + card + register, promotion, and resuming an interrupted build."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aeflow.store import ModelStore
from models.build import build_and_register, code_version, default_name
from models.train import TrainSettings

DIGITS = dict(data="builtin:digits", size="tiny", limit=120, epochs=1)


def test_build_and_register_writes_a_complete_card(tmp_path):
    import onnxruntime as ort

    store = ModelStore(tmp_path / "store", include_shipped=False)
    ref = build_and_register(TrainSettings(kind="conv-vae", latent_dim=3, **DIGITS), store, promote=True)
    assert ref.id == "conv-vae:1" and store.resolve("conv-vae:production").version == 1
    card = ref.card
    for key in ("name", "version", "kind", "created", "code_version", "data", "settings", "metrics", "parity",
                "files", "onnx", "pictures"):
        assert key in card, key
    for key in ("spec", "description", "hash", "split"):
        assert key in card["data"], key
    assert {"inputs", "outputs", "opset", "metadata"} <= set(card["onnx"])
    assert set(card["files"]) == {"model.onnx", "decoder.onnx"}
    assert card["settings"]["kind"] == "conv-vae" and card["main_metric"]["name"] == "elbo"
    for pic in card["pictures"]:
        assert (ref.path / pic).is_file()
    assert (ref.path / "checkpoint.pt").is_file()
    sess = ort.InferenceSession(str(ref.onnx_path()), providers=["CPUExecutionProvider"])
    emb = sess.run(None, {"image": np.zeros((2, 28, 28, 1), np.uint8)})[0]
    assert emb.shape == (2, 3) and sess.get_modelmeta().custom_metadata_map["aeflow.version"] == "1"
    assert not (store.root / ".work" / "conv-vae").exists()  # the default workdir goes once registered


def test_an_interrupted_build_resumes_when_rerun(tmp_path, monkeypatch):
    import models.train as train

    store = ModelStore(tmp_path / "store", include_shipped=False)
    settings = TrainSettings(kind="ae", latent_dim=4, **dict(DIGITS, epochs=2))
    real = train.evaluate_loss
    calls = []

    def interrupt_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate_loss", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        build_and_register(settings, store)
    from models.checkpoint import load_checkpoint

    left = load_checkpoint(store.root / ".work" / "ae" / "last.pt")
    assert left["epoch"] == 1
    monkeypatch.setattr(train, "evaluate_loss", real)
    ref = build_and_register(settings, store)
    history = ref.card["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == left["history"][0]  # epoch 1 was carried over from the interrupted run, not redone


def test_names_and_code_version():
    assert default_name("upscale", 4) == "upscale-x4" and default_name("denoise") == "denoise"
    assert code_version().startswith("0.")


def test_promote_goes_through_the_gate(tmp_path, monkeypatch):
    """--promote moves production only when the new version scores at least as well on the same data."""
    import models.evaluate

    store = ModelStore(tmp_path / "store", include_shipped=False)
    settings = TrainSettings(kind="conv-vae", latent_dim=2, **DIGITS)
    assert build_and_register(settings, store, promote=True).version == 1  # no production yet

    def scores(ckpt, data=None, seed=0, limit=None):  # the stored production checkpoint scores better
        return {"elbo": -120.0 if ".work" in Path(ckpt).parts else -100.0, "eval_data": data}

    monkeypatch.setattr(models.evaluate, "evaluate_model", scores)
    ref = build_and_register(settings, store, promote=True)
    assert ref.version == 2 and store.aliases("conv-vae")["production"] == 1
