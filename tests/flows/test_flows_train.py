"""The training flow on a tiny denoiser against a real Prefect server: the gate refuses worse, accepts better."""
from __future__ import annotations

from pathlib import Path

import pytest

from models.train import TrainSettings

TINY = dict(kind="denoise", epochs=1, steps_per_epoch=2, batch_size=4, patch_size=24, size="tiny", limit=3,
            device="cpu")


@pytest.fixture
def fake_scores(monkeypatch):
    """Replace evaluate_model: new checkpoints score scores['new']; stored version N scores scores[N]."""
    import models.evaluate

    scores: dict = {}
    calls: list = []

    def fake_evaluate(checkpoint, data=None, seed=0, limit=None):
        p = Path(checkpoint)
        key = int(p.parent.name) if p.parent.name.isdigit() else "new"
        calls.append((key, data))
        return {"psnr_25": scores[key], "eval_data": data}

    monkeypatch.setattr(models.evaluate, "evaluate_model", fake_evaluate)
    return scores, calls


def test_gate_refuses_worse_and_accepts_better(prefect_api, flow_run_artifacts, fake_scores, tmp_path):
    from aeflow.store import ModelStore
    from flows.train import train_flow

    scores, calls = fake_scores
    store = str(tmp_path / "store")
    results = []
    for run, value in enumerate((20.0, 19.0, 21.0), start=1):
        scores["new"] = value
        state = train_flow(TrainSettings(**TINY), store=store, workdir=str(tmp_path / f"w{run}"), return_state=True)
        results.append(state.result())
        scores[run] = value  # version `run` now lives in the store with this score
        assert state.is_completed()
        arts = flow_run_artifacts(state.state_details.flow_run_id)
        md = "\n".join(a["data"] for a in arts if a["type"] == "markdown")
        assert f"denoise:{run}" in md and f"{value:.4g}" in md
        if run > 1:  # both numbers are in the artifact
            assert f"{scores[1 if run == 2 else 1]:.4g}" in md
    first, worse, better = results
    assert first["promoted"] and "no production" in first["reason"]
    assert not worse["promoted"] and worse["production_version"] == 1 and "worse" in worse["reason"]
    assert better["promoted"] and better["production_version"] == 1
    assert ModelStore(store).aliases("denoise") == {"production": 3, "latest": 3}
    # production was scored on the new model's data, from the stored checkpoint
    assert (1, "builtin:photos") in calls
    for v in (1, 2, 3):
        assert (Path(store) / "denoise" / str(v) / "checkpoint.pt").is_file()
        assert (Path(store) / "denoise" / str(v) / "model.onnx").is_file()
        # export also tried an int8 graph; the card says whether it kept the PSNR, and the files agree
        card = ModelStore(store).get("denoise", v).card
        assert set(card["int8"]["check"]["delta_db"]) == {"sigma15", "sigma25", "sigma50"}
        # and an fp16 graph (the CUDA default), checked on held-out photos; its sha256 on the card if kept
        assert set(card["fp16"]["check"]["delta_db"]) == {"sigma15", "sigma25", "sigma50"}
        assert ("model.fp16.onnx" in card["files"]) == card["fp16"]["kept"]
        assert ("model.int8.onnx" in card["files"]) == card["int8"]["kept"]
        assert (Path(store) / "denoise" / str(v) / "model.int8.onnx").is_file() == card["int8"]["kept"]


def test_aae_trains_registers_and_gates_on_reconstruction_error(prefect_api, tmp_path):
    """The adversarial autoencoder through the same flow: registered with its prior's numbers, gated on recon_mse."""
    from aeflow.store import ModelStore
    from flows.train import train_flow

    tiny = dict(kind="aae", data="builtin:digits", epochs=1, size="tiny", limit=120, latent_dim=2,
                prior="mixture-labels", device="cpu")
    store = str(tmp_path / "store")
    first = train_flow(TrainSettings(**tiny), store=store, workdir=str(tmp_path / "w1"))
    assert first["promoted"] and first["model"] == "aae:1"
    card = ModelStore(store).get("aae", 1).card
    assert card["settings"]["prior"] == "mixture-labels" and card["main_metric"]["name"] == "recon_mse"
    assert "prior_mmd" in card["metrics"] and "latent_manifold.png" in card["pictures"]
    # the second run scores both versions on the same data; lower reconstruction error wins
    second = train_flow(TrainSettings(**dict(tiny, epochs=3)), store=store, workdir=str(tmp_path / "w2"))
    gate, prod = second["gate_metrics"]["recon_mse"], second["production_metrics"]["recon_mse"]
    assert second["promoted"] == (gate <= prod) and "recon_mse" in second["reason"]
