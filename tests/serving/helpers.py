"""Helpers for the serving tests: HTTP calls, the test inputs, the tiny models of tests/pipeline."""
from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tests.conftest import make_photo

TILE = 32  # small, so the test images (up to 48x64) also go through the tiled path


def pipeline_models():
    """tests/pipeline/pipeline_models.py, imported by path (tests/pipeline is not a package)."""
    path = Path(__file__).parents[1] / "pipeline" / "pipeline_models.py"
    spec = importlib.util.spec_from_file_location("aeflow_test_pipeline_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@dataclass
class Reply:
    """An HTTP answer."""

    status: int
    headers: dict
    body: bytes

    @property
    def model(self) -> str:
        return self.headers.get("x-aeflow-model", "")

    def json(self):
        return json.loads(self.body)


def http(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None) -> Reply:
    """One request with urllib; HTTP errors come back as a Reply too."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def make_inputs(d: Path) -> Path:
    """Photos of several formats and modes (one larger than TILE, so it is tiled)."""
    (d / "sub").mkdir(parents=True)
    Image.fromarray(make_photo(48, 64, 1)).save(d / "a.jpg", quality=92)
    Image.fromarray(make_photo(24, 30, 2)).save(d / "b.png")
    Image.fromarray(make_photo(30, 22, 3)).save(d / "c.webp", quality=90)
    Image.fromarray(make_photo(37, 29, 4)[..., 0]).save(d / "sub" / "grey.png")
    Image.fromarray(make_photo(32, 40, 5)).convert("RGBA").save(d / "sub" / "rgba.png")
    Image.fromarray(make_photo(26, 18, 6)).convert("P").save(d / "sub" / "palette.gif")
    return d


@dataclass
class Api:
    """A running service and what it was built from."""

    url: str
    store: Path
    inputs: Path
    embed_out: Path  # an `aeflow embed` + `aeflow index` folder of `inputs`
    work: Path

    def get(self, path: str, headers: dict | None = None) -> Reply:
        return http(self.url + path, headers=headers)

    def post(self, path: str, data: bytes, headers: dict | None = None) -> Reply:
        return http(self.url + path, data=data, headers=headers, method="POST")


