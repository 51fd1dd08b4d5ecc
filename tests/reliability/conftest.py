"""Fixtures for the reliability suite: the tiny torch-free ONNX models of tests/pipeline in a session store."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.helpers import pipeline_models


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """A model store with denoise (2 box blurs, halo 2), denoise-cnn, upscale-x2 and ae."""
    return pipeline_models().build_store(tmp_path_factory.mktemp("reliability-store") / "store")
