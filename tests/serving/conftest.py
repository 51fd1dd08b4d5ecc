"""One `aeflow api` (Ray Serve) per test module, over a temp store of tiny torch-free ONNX models and batch outputs."""
from __future__ import annotations

import pytest

from tests.conftest import free_port
from tests.serving.helpers import TILE, Api, make_inputs, pipeline_models


@pytest.fixture(scope="module")
def api(ray_session, tmp_path_factory):
    """Store (denoise, denoise-cnn, upscale-x2, ae), inputs, their embed job + index, and the API serving them."""
    from aeflow.store import ModelStore
    from pipeline.index import build_index
    from pipeline.runner import JobConfig, run_job
    from pipeline.serving import ServeConfig, start, stop
    from pipeline.serving_http import Limits

    work = tmp_path_factory.mktemp("serving")
    store = pipeline_models().build_store(work / "store")
    ModelStore(store).set_alias("denoise", "production", 1)
    inputs = make_inputs(work / "in")
    embed_out = work / "embed-out"
    run_job(JobConfig(job="embed", in_dir=inputs, out_dir=embed_out, model="ae", store=store, device="cpu",
                      runner="local", progress=False))
    build_index(embed_out, progress=False)
    cfg = ServeConfig(port=free_port(), store=str(store), device="cpu", denoise_model="denoise",
                      upscale_models=["upscale-x2"], embed_model="ae", index_dir=str(embed_out), tile=TILE,
                      poll_s=0.5, replica_cpus=0.1, limits=Limits(max_bytes=300_000, max_pixels=1_000_000))
    url = start(cfg)
    try:
        yield Api(url, store, inputs, embed_out, work)
    finally:
        stop()
