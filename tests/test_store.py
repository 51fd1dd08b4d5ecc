"""Tests for aeflow/store.py: register/resolve round trip, aliases, and refusal of tampered model files."""
from __future__ import annotations

import json

import pytest

from aeflow.store import ModelIntegrityError, ModelStore, StoreError, sha256_file


def _build(tmp_path, tag: str, decoder: bool = False):
    d = tmp_path / f"build-{tag}"
    d.mkdir()
    (d / "model.onnx").write_bytes(f"fake onnx {tag}".encode())
    if decoder:
        (d / "decoder.onnx").write_bytes(f"fake decoder {tag}".encode())
    (d / "reconstructions.png").write_bytes(b"png")
    return d


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "store", include_shipped=False)


def test_register_and_resolve_round_trip(store, tmp_path):
    assert store.next_version("ae") == 1
    ref = store.register("ae", _build(tmp_path, "a", decoder=True), {"kind": "ae", "metrics": {"knn_acc": 0.9}})
    assert (ref.name, ref.version, ref.id) == ("ae", 1, "ae:1")
    assert ref.card["kind"] == "ae" and ref.card["metrics"] == {"knn_acc": 0.9} and "created" in ref.card
    assert set(ref.card["files"]) == {"model.onnx", "decoder.onnx"}
    assert ref.card["files"]["model.onnx"] == sha256_file(ref.path / "model.onnx") == ref.sha256
    assert ref.onnx_path() == store.root / "ae" / "1" / "model.onnx"
    assert ref.file("decoder.onnx").read_bytes() == b"fake decoder a"
    assert (ref.path / "reconstructions.png").is_file()
    assert store.next_version("ae") == 2
    for spec in ("ae", "ae:1", "ae:latest", str(ref.path), str(ref.path / "model.onnx")):
        got = store.resolve(spec)
        assert (got.name, got.version) == ("ae", 1), spec
    assert [(n, store.versions(n)) for n in store.names()] == [("ae", [1])]
    # the build folder is copied, not moved, unless asked
    assert (tmp_path / "build-a" / "model.onnx").is_file()
    ref2 = store.register("ae", _build(tmp_path, "b"), {"kind": "ae"}, move=True)
    assert ref2.version == 2 and not (tmp_path / "build-b").exists()
    assert not [p for p in (store.root / "ae").iterdir() if p.name.startswith(".staging")]


def test_aliases_latest_and_production(store, tmp_path):
    for tag in "abc":
        store.register("denoise", _build(tmp_path, tag), {"kind": "denoise"})
    assert store.versions("denoise") == [1, 2, 3]
    assert store.resolve("denoise").version == 3  # no production yet: latest
    store.set_alias("denoise", "production", 2)
    assert store.aliases("denoise") == {"production": 2, "latest": 3}
    assert store.resolve("denoise").version == 2  # a plain name means production once it is set
    assert store.resolve("denoise:production").version == 2
    assert store.resolve("denoise:latest").version == 3
    assert store.resolve("denoise:1").version == 1
    store.set_alias("denoise", "production", 3)
    assert store.resolve("denoise").version == 3
    assert json.loads((store.root / "denoise" / "aliases.json").read_text()) == {"production": 3}
    with pytest.raises(StoreError, match="cannot set alias 'latest'"):
        store.set_alias("denoise", "latest", 1)
    with pytest.raises(StoreError, match="no model denoise:9"):
        store.set_alias("denoise", "staging", 9)
    with pytest.raises(StoreError, match="no alias 'staging'"):
        store.resolve("denoise:staging")


def test_unknown_and_malformed_specs(store, tmp_path):
    store.register("ae", _build(tmp_path, "a"), {"kind": "ae"})
    with pytest.raises(StoreError, match="no model named 'vae'.*known: ae"):
        store.resolve("vae")
    with pytest.raises(StoreError, match="bad model spec"):
        store.resolve("../etc:1")
    with pytest.raises(StoreError, match="no model ae:7"):
        store.resolve("ae:7")
    with pytest.raises(StoreError, match="bad model name"):
        store.register("no/slashes", _build(tmp_path, "b"), {})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreError, match="holds no model.onnx"):
        store.register("ae", empty, {})


def test_tampered_model_is_refused_with_a_clear_message(store, tmp_path):
    ref = store.register("denoise", _build(tmp_path, "a"), {"kind": "denoise"})
    (ref.path / "model.onnx").write_bytes(b"swapped weights")
    with pytest.raises(ModelIntegrityError, match=r"sha256 mismatch.*refusing to load it"):
        store.resolve("denoise").onnx_path()
    # a file the card holds no sha256 for is refused too, and a missing one is named
    (ref.path / "extra.onnx").write_bytes(b"x")
    with pytest.raises(ModelIntegrityError, match="card lists no sha256"):
        ref.file("extra.onnx")
    (ref.path / "model.onnx").unlink()
    with pytest.raises(StoreError, match="missing file"):
        ref.onnx_path()


def test_a_folder_without_a_card_is_not_loaded(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "model.onnx").write_bytes(b"x")
    with pytest.raises(StoreError, match="no card.json beside it"):
        ModelStore(tmp_path / "s").resolve(str(loose / "model.onnx"))
