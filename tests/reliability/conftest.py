"""Fixtures for the reliability suite: the tiny torch-free ONNX models of tests/pipeline in a session store."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def pipeline_models():
    """tests/pipeline/pipeline_models.py, imported by path (tests/pipeline is not a package)."""
    path = Path(__file__).parents[1] / "pipeline" / "pipeline_models.py"
    spec = importlib.util.spec_from_file_location("aeflow_reliability_pipeline_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """A model store with denoise (2 box blurs, halo 2), denoise-cnn, upscale-x2 and ae."""
    return pipeline_models().build_store(tmp_path_factory.mktemp("reliability-store") / "store")
