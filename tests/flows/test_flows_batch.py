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
