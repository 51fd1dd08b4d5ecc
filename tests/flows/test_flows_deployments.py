"""Deployment definitions without a server: `aeflow serve`'s deployments and prefect.yaml agree and are valid."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from flows.deploy import ServeSettings, build_deployments
from models.train import TrainSettings

ROOT = Path(__file__).resolve().parents[2]


def _by_name(deps) -> dict:
    return {f"{d.flow_name}/{d.name}": d for d in deps}


def test_served_deployments_have_schedules_parameters_and_limit_one(tmp_path):
    s = ServeSettings(store="/s", embed_dir=str(tmp_path), embed_out="/o", runner="local")
    deps = _by_name(build_deployments(s))
    assert set(deps) == {"embed/nightly-embed", "train/weekly-retrain-denoise", "train/on-demand",
                         "denoise/on-demand", "upscale/on-demand", "embed/on-demand"}
    nightly, retrain = deps["embed/nightly-embed"], deps["train/weekly-retrain-denoise"]
    assert [sc.schedule.cron for sc in nightly.schedules] == ["0 2 * * *"]
    assert [sc.schedule.cron for sc in retrain.schedules] == ["0 3 * * 0"]
    assert nightly.parameters["in_dir"] == str(tmp_path) and nightly.parameters["runner"] == "local"
    assert retrain.parameters["promote"] is True and retrain.parameters["settings"]["kind"] == "denoise"
    assert TrainSettings(**retrain.parameters["settings"]) == ServeSettings().retrain  # what `aeflow train` takes
    for d in deps.values():
        assert d.concurrency_limit == 1 or d.concurrency_limit.limit == 1
        assert d.entrypoint.startswith("flows.")  # module path: works from any working directory


def test_interval_schedules_and_switches():
    s = ServeSettings(embed_dir="/in", embed_out="/o", embed_interval=5, retrain=None, on_demand=False)
    (only,) = build_deployments(s)
    assert only.name == "nightly-embed" and only.schedules[0].schedule.interval.total_seconds() == 5
    with pytest.raises(ValueError, match="both"):
        build_deployments(ServeSettings(embed_dir="/in"))
    with pytest.raises(ValueError, match="on_overlap"):
        build_deployments(ServeSettings(on_overlap="sometimes"))


def test_prefect_yaml_matches_the_flows():
    cfg = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    served = _by_name(build_deployments(ServeSettings(embed_dir="/data/incoming", embed_out="/data/embeddings")))
    seen = set()
    for d in cfg["deployments"]:
        path, func = d["entrypoint"].split(":")
        fl = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        params = inspect.signature(fl.fn).parameters
        assert set(d.get("parameters", {})) <= set(params), d["name"]
        assert d["concurrency_limit"]["limit"] == 1
        key = f"{fl.name}/{d['name']}"
        seen.add(key)
        if d.get("schedules"):
            assert [s["cron"] for s in d["schedules"]] == [sc.schedule.cron for sc in served[key].schedules]
    assert seen == set(served)


def test_serve_needs_a_server(monkeypatch, capsys):
    from aeflow.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["serve"]) == 2
    assert "prefect server start" in capsys.readouterr().err
