"""`aeflow demo` (test-sized) end to end: train, register, promote, denoise, upscale, embed, index, search."""
from __future__ import annotations

import json

import httpx


def test_demo_runs_the_whole_chain(demo_run, prefect_server):
    work, proc = demo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "EXPECTED to fail" in proc.stdout and "PSNR" in proc.stdout
    r = json.loads((work / "demo-summary.json").read_text())
    assert {k: t["promoted"] for k, t in r["trained"].items()} == {"denoise": True, "upscale": True, "ae": True}
    for name in ("denoise", "upscale-x2", "ae"):
        assert json.loads((work / "store" / name / "aliases.json").read_text()) == {"production": 1}
    for job in ("denoise", "upscale"):
        assert r[job]["counts"] == {"total": 9, "ok": 6, "failed": 3, "skipped": 0}
        assert sorted(f["path"] for f in r[job]["failures"]) == ["corrupt.jpg", "empty.png", "notes.png"]
    assert r["embed"]["job"]["counts"]["ok"] == 6
    assert r["embed"]["index"]  # built
    assert r["embed"]["hits"][0]["path"] == "astronaut-000.png"  # the query finds itself first
    assert len(list((work / "outputs" / "denoised").rglob("*.png"))) == 6
    assert len(list((work / "outputs" / "upscaled").rglob("*.png"))) == 6
    assert r["psnr"]["noisy_input"] is not None and r["psnr"]["denoised"] is not None
    # every flow reported to the server, with its artifacts
    runs = httpx.post(f"{prefect_server.api_url}/flow_runs/filter", json={"limit": 200}).json()
    names = {x["name"]: x for x in httpx.post(f"{prefect_server.api_url}/flows/filter", json={}).json()}
    demo_ids = {run["id"] for run in runs if run["flow_id"] == names["demo"]["id"]}
    assert demo_ids and all(run["state_type"] == "COMPLETED" for run in runs if run["id"] in demo_ids)
    keys = {a["key"] for a in httpx.post(f"{prefect_server.api_url}/artifacts/filter", json={"limit": 200}).json()}
    assert {"promotion-denoise", "promotion-upscale-x2", "promotion-ae", "embed-search"} <= keys
    assert any(k.startswith("denoise-") for k in keys) and any(k.startswith("upscale-") for k in keys)


def test_demo_rerun_is_incremental(demo_run, prefect_api, tmp_path):
    """The batch flows skip files already done: a second denoise over the same folder processes nothing new."""
    from flows.batch import denoise_flow

    work, proc = demo_run
    assert proc.returncode == 0
    out = work / "outputs" / "denoised"
    summary = denoise_flow(str(work / "samples" / "noisy"), str(out), store=str(work / "store"), runner="local")
    assert summary["counts"]["ok"] == 0 and summary["counts"]["skipped"] == 6
    # every setting of `aeflow denoise` reaches the job, the graph's precision included
    fp32 = denoise_flow(str(work / "samples" / "noisy"), str(tmp_path / "fp32"), store=str(work / "store"),
                        runner="local", precision="fp32", format="png")
    assert fp32["precision"] == "fp32" and fp32["counts"]["ok"] == 6


def test_a_second_demo_rebuilds_the_index_for_its_new_ae(demo_run, prefect_api, tmp_path):
    """Each demo run trains a new ae version; its embed must replace the index, not stop on the model change."""
    import shutil

    import pytest

    from aeflow.store import ModelStore
    from flows.batch import embed_flow
    from models.build import build_and_register
    from models.train import TrainSettings
    from pipeline.index import IndexMismatchError

    work, proc = demo_run
    assert proc.returncode == 0
    store = tmp_path / "store"
    shutil.copytree(work / "store", store)  # the session's demo outputs stay as they are for the other tests
    out = tmp_path / "embeddings"
    shutil.copytree(work / "outputs" / "embeddings", out)
    ref = build_and_register(TrainSettings(kind="ae", data="builtin:digits", size="tiny", limit=120, epochs=1),
                             ModelStore(store))
    assert ref.version == 2
    args = (str(work / "samples" / "clean"), str(out))
    with pytest.raises(IndexMismatchError):  # what a plain update does when the model changed
        embed_flow(*args, model="ae:latest", store=str(store), runner="local")
    r = embed_flow(*args, model="ae:latest", store=str(store), runner="local", rebuild_index=True)
    assert r["index"]["model"] == "ae:2" and r["index"]["action"] == "rebuilt"
