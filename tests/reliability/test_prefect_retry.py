"""A Prefect task failing transiently is retried, then succeeds; the run's task states show the retry."""
from __future__ import annotations

import asyncio

from PIL import Image

from tests.conftest import make_photo


def test_transient_task_failure_is_retried_and_shown(prefect_api, store, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    import flows.batch
    import pipeline.runner

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(make_photo(16, 16)).save(src / "a.png")
    real_run_job = pipeline.runner.run_job
    calls = []

    def flaky_run_job(cfg):
        calls.append(cfg.job)
        if len(calls) == 1:
            raise ConnectionError("simulated: the Ray head was unreachable")  # transient: retried
        return real_run_job(cfg)

    monkeypatch.setattr(pipeline.runner, "run_job", flaky_run_job)
    # the flow's own task, its retry delay cut from 10 s (the retry policy itself is unchanged)
    monkeypatch.setattr(flows.batch, "run_job_task", flows.batch.run_job_task.with_options(retry_delay_seconds=0))
    state = flows.batch.denoise_flow(str(src), str(out), model="denoise", store=str(store), runner="local",
                                     return_state=True)
    assert state.is_completed(), state
    assert state.result()["counts"]["ok"] == 1 and calls == ["denoise", "denoise"]

    async def task_runs():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50)  # explicit: None is refused by this server
            return [(r, [s.name for s in await client.read_task_run_states(r.id)]) for r in runs]

    runs = [(r, names) for r, names in asyncio.run(task_runs()) if r.task_key.startswith("run_job_task")]
    assert len(runs) == 1
    run, names = runs[0]
    assert run.run_count == 2 and run.state.is_completed()
    assert "Retrying" in names and names[-1] == "Completed", names  # seen: Pending, Running, Retrying, Completed
