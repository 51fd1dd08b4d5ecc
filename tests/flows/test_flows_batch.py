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
