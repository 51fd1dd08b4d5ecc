"""Batch-flow plumbing without Prefect: which failures the job task retries."""
from __future__ import annotations

import pytest

from flows.batch import _is_transient


class _FailedState:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def result(self):
        raise self.exc


@pytest.mark.parametrize("exc,retry", [
    (RuntimeError("ray worker died"), True),
    (OSError("disk hiccup"), True),
    (FileNotFoundError("no such folder"), False),
    (ValueError("bad setting"), False),
])
def test_only_transient_failures_are_retried(exc, retry):
    assert _is_transient(None, None, _FailedState(exc)) is retry


def test_usage_errors_of_the_pipeline_are_not_retried():
    from aeflow.store import StoreError
    from pipeline.predictor import JobConfigError

    assert _is_transient(None, None, _FailedState(JobConfigError("unknown job"))) is False
    assert _is_transient(None, None, _FailedState(StoreError("no model named x"))) is False


def test_embed_flow_groups_duplicates_and_links_the_page(prefect_api, flow_run_artifacts, tmp_path):
    """embed → index → dedup in one flow run; its markdown artifact links OUT_DIR/dedup/index.html."""
    import shutil

    import numpy as np
    from PIL import Image

    from flows.batch import embed_flow
    from models.data import resolve_data

    src = tmp_path / "in"
    src.mkdir()
    digits = resolve_data("builtin:digits", "ae", input_size=28, channels=1, limit=40).x_train[:8]
    for i, a in enumerate(digits):
        Image.fromarray(np.rint(a[0] * 255).astype(np.uint8)).save(src / f"{i}.png")
    shutil.copyfile(src / "0.png", src / "0-copy.png")
    state = embed_flow(str(src), str(tmp_path / "out"), model="ae", store=str(tmp_path / "empty-store"),
                       runner="local", dedup=True, return_state=True)
    result = state.result()
    groups = result["dedup"]
    assert groups["images"] == 9 and groups["exact_duplicates"] >= 1
    assert (tmp_path / "out" / "dedup" / "index.html").is_file()
    md = "\n".join(a["data"] for a in flow_run_artifacts(state.state_details.flow_run_id) if a["type"] == "markdown")
    assert "# duplicates in" in md and "dedup/index.html" in md


def test_the_batch_flows_parameters_are_the_jobs_settings():
    """Each flow parameter that configures the job is a JobConfig field of the same name, and reaches it."""
    import dataclasses
    import inspect

    from flows.batch import _job_config, denoise_flow, embed_flow, upscale_flow
    from pipeline.runner import JobConfig

    fields = {f.name for f in dataclasses.fields(JobConfig)}
    for fl, extra in ((denoise_flow, set()), (upscale_flow, set()),
                      (embed_flow, {"index", "rebuild_index", "query", "k", "dedup", "dedup_threshold"})):
        params = inspect.signature(fl.fn).parameters
        assert set(params) - fields == extra, fl.name
        cfg = _job_config(fl.name, {name: p.default for name, p in params.items()} | {"in_dir": "i", "out_dir": "o",
                                                                                   "precision": "fp32"})
        assert cfg.job == fl.name and cfg.precision == "fp32" and cfg.model == params["model"].default


def test_embed_flow_on_s3_urls(prefect_api, flow_run_artifacts, s3, tmp_path):
    """The same flow with s3:// folders: embeddings, index and the review page land in the bucket."""
    import numpy as np
    from PIL import Image

    from flows.batch import embed_flow
    from tests.conftest import S3_KEY_ID, S3_SECRET

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(src / f"{i}.png")
    s3.upload(src, f"s3://{s3.inp}/p")
    s3.client.copy_object(Bucket=s3.inp, Key="p/0-copy.png", CopySource={"Bucket": s3.inp, "Key": "p/0.png"})
    out = f"s3://{s3.out}/emb"
    state = embed_flow(f"s3://{s3.inp}/p", out, store=str(tmp_path / "empty-store"), runner="local", dedup=True,
                       s3_endpoint=s3.endpoint, return_state=True)
    result = state.result()
    assert result["job"]["counts"]["ok"] == 5 and result["dedup"]["exact_duplicates"] == 1
    keys = s3.keys(out)
    assert {"index/index.json", "dedup/index.html", "dedup/groups.parquet"} <= set(keys)
    md = "\n".join(a["data"] for a in flow_run_artifacts(state.state_details.flow_run_id) if a["type"] == "markdown")
    assert f"{out}/dedup/index.html" in md
    assert S3_SECRET not in md and S3_KEY_ID not in md


def test_schedules_take_s3_urls():
    from flows.deploy import ServeSettings, build_deployments

    deps = build_deployments(ServeSettings(embed_dir="s3://photos/2026", embed_out="s3://photos-emb/2026",
                                           s3_endpoint="http://127.0.0.1:9000", retrain=None, on_demand=False))
    (nightly,) = deps
    assert nightly.parameters["in_dir"] == "s3://photos/2026" and nightly.parameters["out_dir"] == "s3://photos-emb/2026"
    assert nightly.parameters["s3_endpoint"] == "http://127.0.0.1:9000"
