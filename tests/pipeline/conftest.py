"""Fixtures for the pipeline tests: a model store of tiny torch-free ONNX models, small image folders."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_models import build_store, photo, save  # noqa: E402


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """A model store with denoise, denoise-cnn, upscale-x2 and ae."""
    return build_store(tmp_path_factory.mktemp("store") / "store")


@pytest.fixture
def images(tmp_path) -> Path:
    """Input folder: good images of a few sizes and formats plus corrupt, zero-byte and non-image files."""
    d = tmp_path / "in"
    save(d / "a.jpg", photo(24, 32, 1), quality=90)
    save(d / "b.png", photo(24, 32, 2))
    save(d / "sub" / "c.png", photo(20, 28, 3))
    save(d / "sub" / "deep" / "d.webp", photo(30, 18, 4), quality=90)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "empty.png").write_bytes(b"")
    (d / "notes.png").write_text("this is text, not an image")
    (d / "readme.txt").write_text("not listed: no image suffix")
    return d
