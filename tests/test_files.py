"""aeflow/files.py and the store's card updates: files are published whole or not at all."""
from __future__ import annotations

import json

import pytest

from aeflow.files import atomic_path, write_bytes, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    f = tmp_path / "summary.json"
    write_json(f, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(f) as tmp:
            tmp.write_text('{"a": ')  # half written, then the writer dies
            raise RuntimeError("killed")
    assert json.loads(f.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_the_new_file_replaces_the_old_and_is_readable_by_others(tmp_path):
    f = write_bytes(tmp_path / "model.onnx", b"old")
    write_bytes(f, b"new")
    assert f.read_bytes() == b"new" and (f.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_update_card_merges_and_a_store_refuses_shipped_versions(tmp_path):
    from aeflow.store import ModelStore, StoreError, update_card

    src = tmp_path / "src"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"x")
    store = ModelStore(tmp_path / "store")
    ref = store.register("m", src, {"kind": "ae", "metrics": {"mse": 1.0}})
    new = store.update_card("m:1", {"dedup": {"threshold": 0.8}})
    assert new.card["dedup"] == {"threshold": 0.8} and new.card["metrics"] == {"mse": 1.0}
    assert store.resolve("m").card["dedup"]["threshold"] == 0.8
    assert update_card(ref.path, {"note": "x"})["dedup"] == {"threshold": 0.8}
    with pytest.raises(StoreError, match="read-only"):
        store.update_card("ae", {"note": "x"})  # resolves to the shipped ae
    with pytest.raises(StoreError, match="no card.json"):
        update_card(tmp_path, {})
