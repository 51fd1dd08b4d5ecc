"""Predictor: one session, metadata, devices (no GPU here: cuda is a clean config error)."""
from __future__ import annotations

import numpy as np
import pytest

from aeflow.store import ModelStore
from pipeline.predictor import JobConfigError, ModelInfo, Predictor, resolve_device


def test_predictor_runs_each_role(store):
    s = ModelStore(store)
    up = Predictor(str(s.resolve("upscale-x2").onnx_path()))
    assert up.info.role == "image2image" and up.info.scale == 2 and up.info.halo == 1
    assert up({"image": np.zeros((2, 5, 7, 3), np.uint8)})["output"].shape == (2, 10, 14, 3)
    enc = Predictor(str(s.resolve("ae").onnx_path()))
    v = enc({"image": np.full((3, 8, 8, 3), 200, np.uint8)})["embedding"]
    assert v.shape == (3, 12) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert up.providers == ["CPUExecutionProvider"] and up.device == "cpu"


def test_io_binding_gives_the_same_outputs_and_is_off_on_cpu_by_default(store, monkeypatch):
    """The CUDA path binds input and output buffers; the same code runs on CPU, where the default is off."""
    s = ModelStore(store)
    rng = np.random.default_rng(0)
    for name, shape in (("upscale-x2", (2, 9, 11, 3)), ("ae", (3, 8, 8, 3))):
        path = str(s.resolve(name).onnx_path())
        plain, bound = Predictor(path), Predictor(path, io_binding=True)
        assert not plain.io_binding and bound.io_binding
        x = {"image": rng.integers(0, 256, shape, dtype=np.uint8)}
        (key, a), (_, b) = next(iter(plain(x).items())), next(iter(bound(x).items()))
        assert a.dtype == b.dtype and np.array_equal(a, b), key
    monkeypatch.setenv("AEFLOW_IO_BINDING", "1")
    assert Predictor(str(s.resolve("ae").onnx_path())).io_binding
    monkeypatch.setenv("AEFLOW_IO_BINDING", "yes")
    with pytest.raises(JobConfigError, match="AEFLOW_IO_BINDING"):
        Predictor(str(s.resolve("ae").onnx_path()))


def test_devices_without_gpu():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == "cpu"
    with pytest.raises(JobConfigError, match="CUDAExecutionProvider"):
        resolve_device("cuda")
    with pytest.raises(JobConfigError):
        resolve_device("tpu")


def test_metadata_must_be_aeflow():
    with pytest.raises(JobConfigError, match="aeflow.role"):
        ModelInfo.from_metadata({})
    assert ModelInfo.from_metadata({"aeflow.role": "encoder", "aeflow.input_size": "32"}).input_size == 32


def test_session_options_bound_the_threads_and_do_not_spin():
    from pipeline.predictor import session_options

    o = session_options(3)
    assert o.intra_op_num_threads == 3 and o.inter_op_num_threads == 1
    # idle onnxruntime threads would otherwise spin on the cores the worker's decode threads need
    assert o.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(0).intra_op_num_threads == 1
