"""Tests for `aeflow train` and `aeflow models list|show|alias`: tiny runs of every kind through the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from aeflow.cli import main
from aeflow.store import ModelStore

# Tiny runs: image models on the generated photo folder, digit models on a slice of builtin:digits.
IMAGE_FLAGS = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--patch-size", "16",
               "--size", "tiny", "--val-fraction", "0.3"]
DIGIT_FLAGS = ["--data", "builtin:digits", "--epochs", "1", "--size", "tiny", "--limit", "120"]


def _train(argv: list[str], store) -> int:
    return main(["train", *argv, "--store", str(store)])


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory):
    """A store holding one tiny model of every kind, trained through the CLI."""
    from PIL import Image

    from tests.conftest import make_photo

    root = tmp_path_factory.mktemp("cli")
    photos = root / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(make_photo(40, 48, seed=i)).save(photos / f"{i}.png")
    store = root / "store"
    runs = [["denoise", "--data", str(photos), *IMAGE_FLAGS],
            ["upscale", "--scale", "2", "--data", str(photos), *IMAGE_FLAGS],
            ["upscale", "--scale", "4", "--data", str(photos), *IMAGE_FLAGS],
            ["ae", "--latent-dim", "8", *DIGIT_FLAGS],
            ["vae", "--latent-dim", "2", *DIGIT_FLAGS],
            ["conv-vae", "--latent-dim", "4", *DIGIT_FLAGS],
            ["aae", "--latent-dim", "2", "--prior", "mixture", *DIGIT_FLAGS]]
    for argv in runs:
        assert _train(argv, store) == 0, argv
    return store


def test_every_kind_trains_exports_and_registers(trained_store, capsys):
    st = ModelStore(trained_store, include_shipped=False)
    assert st.names() == ["aae", "ae", "conv-vae", "denoise", "upscale-x2", "upscale-x4", "vae"]
    for name in st.names():
        ref = st.resolve(name)  # no production alias yet: latest
        assert ref.version == 1 and ref.onnx_path().is_file()
        assert ref.card["metrics"][ref.card["main_metric"]["name"]] is not None
    meta = st.resolve("upscale-x4").card["onnx"]["metadata"]
    assert meta["aeflow.scale"] == "4" and meta["aeflow.role"] == "image2image"


def test_denoise_onnx_runs_on_any_size(trained_store):
    import onnxruntime as ort

    ref = ModelStore(trained_store).resolve("denoise")
    sess = ort.InferenceSession(str(ref.onnx_path()), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": np.full((1, 19, 23, 3), 90, np.uint8)})[0]
    assert out.shape == (1, 19, 23, 3) and out.dtype == np.uint8


def test_models_list_show_and_alias(trained_store, capsys):
    assert main(["models", "list", "--store", str(trained_store)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "VERSION", "ALIASES", "KIND", "MAIN", "METRIC", "CREATED"]
    assert "psnr_25=" in out and "psnr_gain=" in out and "knn_acc=" in out and "elbo=" in out

    assert main(["models", "show", "vae", "--store", str(trained_store)]) == 0
    out = capsys.readouterr().out
    assert "vae:1" in out and "latent_manifold.png" in out and "sha256" in out

    assert main(["models", "show", "vae:latest", "--json", "--store", str(trained_store)]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "vae"

    assert main(["models", "alias", "ae", "1", "production", "--store", str(trained_store)]) == 0
    st = ModelStore(trained_store)
    assert st.resolve("ae:production").version == 1 and st.aliases("ae")["production"] == 1
    assert main(["models", "list", "--store", str(trained_store)]) == 0
    assert "latest,production" in capsys.readouterr().out


def test_aae_card_pictures_and_embed_job(trained_store, tmp_path):
    """`aeflow train aae` registers encoder + decoder with the prior's numbers; `aeflow embed --model aae` runs it."""
    from PIL import Image

    from models.data import resolve_data
    from pipeline.embeddings import read_embeddings, vectors_of

    ref = ModelStore(trained_store, include_shipped=False).resolve("aae")
    card = ref.card
    assert card["main_metric"] == {"name": "recon_mse", "higher_is_better": False,
                                   "value": card["metrics"]["recon_mse"]}
    assert card["settings"]["prior"] == "mixture" and card["onnx"]["metadata"]["aeflow.role"] == "encoder"
    for key in ("prior_mmd", "prior_mmd_floor", "latent_cov_err", "disc_acc", "knn_acc", "pca_knn_acc"):
        assert isinstance(card["metrics"][key], float), key
    assert all("d_acc" in h for h in card["training"]["history"])
    assert {"latent_scatter.png", "latent_manifold.png", "training_curves.png"} <= set(card["pictures"])
    assert (ref.path / "decoder.onnx").is_file()

    digits = resolve_data("builtin:digits", "aae", input_size=28, channels=1, limit=20)
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, a in enumerate(digits.x_train[:6]):
        Image.fromarray(np.rint(a[0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "emb"
    assert main(["embed", str(folder), str(out), "--model", "aae", "--store", str(trained_store),
                 "--runner", "local", "--no-progress"]) == 0
    table = read_embeddings(out)
    assert table.num_rows == 6 and vectors_of(table).shape == (6, 2)
    assert set(table.column("model").to_pylist()) == {ref.id}


def test_resume_from_a_workdir_and_register_the_next_version(trained_store, tmp_path):
    work = tmp_path / "work"
    assert _train(["ae", "--latent-dim", "8", *DIGIT_FLAGS, "--workdir", str(work)], trained_store) == 0
    assert (work / "last.pt").is_file()  # an explicit workdir is kept
    argv = ["ae", "--latent-dim", "8", *DIGIT_FLAGS, "--resume", str(work / "last.pt")]
    argv[argv.index("--epochs") + 1] = "2"
    assert _train(argv, trained_store) == 0
    ref = ModelStore(trained_store).resolve("ae:latest")
    assert ref.version >= 2 and [h["epoch"] for h in ref.card["training"]["history"]] == [1, 2]


@pytest.mark.parametrize("argv,msg", [
    (["denoise", "--data", "builtin:mnist", "--size", "tiny"], "digits, not photos"),
    (["denoise", "--latent-dim", "4"], "latent-dim"),
    (["ae", "--data", "/no/such/folder"], "does not exist"),
    (["ae", "--resume", "/no/such/last.pt"], "no such checkpoint"),
])
def test_usage_errors_exit_2(tmp_path, capsys, argv, msg):
    assert _train(argv, tmp_path / "store") == 2
    assert msg in capsys.readouterr().err


def test_bad_choices_and_unknown_models(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "upscale", "--scale", "3"])
    assert exc.value.code == 2
    assert main(["models", "show", "nothing", "--store", str(tmp_path)]) == 2
    assert "no model named 'nothing'" in capsys.readouterr().err


def test_photo_ae_flags_parse_to_the_settings():
    import argparse

    import aeflow.cli.models as m

    sub = argparse.ArgumentParser().add_subparsers()
    m.add_commands(sub)
    args = sub.choices["train"].parse_args(["photo-ae", "--mirror", "true", "--same-photo", "4"])
    assert args.mirror is True and args.same_photo == 4
    assert sub.choices["train"].parse_args(["photo-ae"]).mirror is False
    with pytest.raises(SystemExit):
        sub.choices["train"].parse_args(["photo-ae", "--mirror", "maybe"])


def test_cli_module_does_not_import_torch():
    code = ("import argparse, sys, aeflow.cli.models as m; m.add_commands(argparse.ArgumentParser().add_subparsers()); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
