"""flows/ship.py: a recipe runs through the training flow into the shipped folder, verified, without torch files."""
from __future__ import annotations

import json

import flows.ship as ship_mod
from aeflow.store import ModelStore


def test_ship_trains_with_the_flow_and_copies_onnx_card_pictures(prefect_api, monkeypatch, tmp_path):
    tiny = dict(kind="denoise", data="builtin:photos", epochs=1, steps_per_epoch=2, batch_size=4, patch_size=24,
                size="tiny", limit=3, synthetic=1, lr_schedule="cosine")
    monkeypatch.setattr(ship_mod, "RECIPES", {"tiny-denoise": tiny})
    monkeypatch.setattr(ship_mod, "INT8_QAT", {"tiny-denoise": dict(steps=2)})
    dest = tmp_path / "shipped"
    (target,) = ship_mod.ship(["tiny-denoise"], store=str(tmp_path / "store"), device="cpu", dest_root=dest)
    assert target == dest / "tiny-denoise" / "1"
    names = {p.name for p in target.iterdir()}
    assert "model.onnx" in names and "card.json" in names and not any(n.endswith(".pt") for n in names)
    card = json.loads((target / "card.json").read_text())
    assert card["shipped"]["recipe"] == tiny and card["version"] == 1
    assert card["settings"]["synthetic"] == 1 and card["settings"]["lr_schedule"] == "cosine"
    assert card["data"]["synthetic"]["count"] == 1
    ref = ModelStore(dest, include_shipped=False).resolve("tiny-denoise")
    assert ref.onnx_path().is_file()  # the sha256 on the card still matches the copied file
    int8 = card["int8"]  # rebuilt in the shipped folder (fine-tuned only where post-training int8 failed)
    assert set(int8["check"]["delta_db"]) == {"sigma15", "sigma25", "sigma50"}
    assert (target / "model.int8.onnx").is_file() == int8["kept"] == ("model.int8.onnx" in card["files"])
    if int8["kept"]:
        ref.file("model.int8.onnx")  # its sha256 is on the card
    # shipping again replaces the copy instead of adding versions
    ship_mod.ship(["tiny-denoise"], store=str(tmp_path / "store"), device="cpu", dest_root=dest)
    assert sorted(p.name for p in (dest / "tiny-denoise").iterdir()) == ["1"]


def test_ship_cli_rejects_unknown_recipe(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        ship_mod.main(["denoize"])
    assert exc.value.code == 2 and "unknown recipe" in capsys.readouterr().err


def test_photo_recipes_train_on_the_fetched_folder():
    import pytest

    r = ship_mod.resolve_recipe(ship_mod.RECIPES["photo-ae"], "/data/photos")
    assert r["data"] == "/data/photos/train" and r["kind"] == "photo-ae"
    assert ship_mod.resolve_recipe(ship_mod.RECIPES["ae"], None) == ship_mod.RECIPES["ae"]
    with pytest.raises(SystemExit, match="models.photos fetch"):
        ship_mod.resolve_recipe(ship_mod.RECIPES["photo-ae"], None)


def test_reuse_ships_only_a_version_trained_with_the_recipe(tmp_path):
    import pytest

    recipe = ship_mod.resolve_recipe(ship_mod.RECIPES["photo-ae"], str(tmp_path))
    settings = {**recipe, "data": str(tmp_path / "train"), "seed": 0, "size": "small"}
    ship_mod.check_trained_as({"settings": settings}, recipe)  # extra settings beyond the recipe are fine
    with pytest.raises(SystemExit, match=rf"epochs=5 \(recipe {recipe['epochs']}\)"):
        ship_mod.check_trained_as({"settings": {**settings, "epochs": 5}}, recipe)
    with pytest.raises(SystemExit, match="data="):
        ship_mod.check_trained_as({"settings": {**settings, "data": "/elsewhere"}}, recipe)


def test_training_seconds_add_up_the_epochs_of_a_resumed_run():
    card = {"training": {"seconds": 9.0, "history": [{"epoch": 1, "seconds": 60.0}, {"epoch": 2, "seconds": 61.5}]}}
    assert ship_mod.training_seconds(card) == 121.5
    assert ship_mod.training_seconds({"training": {"seconds": 30.0}}) == 30.0
    assert ship_mod.training_seconds({}) is None
