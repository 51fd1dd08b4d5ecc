"""Tests for pipeline/embeddings.py: atomic numbered parts, schema, latest-row-wins reading."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import embeddings as emb
from pipeline.embeddings import (
    EmbeddingsError,
    EmbeddingWriter,
    iter_embedding_batches,
    list_parts,
    read_embeddings,
    vectors_of,
)


def _rows(n: int, dim: int = 4, seed: int = 0, start: int = 0):
    rng = np.random.default_rng(seed)
    paths = [f"sub/img{start + i:03d}.png" for i in range(n)]
    return paths, rng.normal(size=(n, dim)).astype(np.float32), list(range(10, 10 + n)), [7] * n


def _write(out, n, *, seed=0, start=0, prefix="part", rows_per_part=4096, dtype="float32", model="m:1"):
    paths, v, w, h = _rows(n, seed=seed, start=start)
    with EmbeddingWriter(out, dim=4, model_id=model, dtype=dtype, rows_per_part=rows_per_part, prefix=prefix) as wr:
        wr.add(paths, v, w, h)
    return wr, paths, v


def test_parts_schema_and_roundtrip(tmp_path):
    wr, paths, v = _write(tmp_path, 10, rows_per_part=4)
    assert [p.name for p in wr.written] == ["part-00001.parquet", "part-00002.parquet", "part-00003.parquet"]
    assert list_parts(tmp_path) == wr.written
    t = read_embeddings(tmp_path)
    assert t.column_names == ["path", "vector", "width", "height", "model", "written_at"]
    assert t.schema.field("vector").type == pa.list_(pa.float32(), 4)
    assert t.schema.field("written_at").type == pa.timestamp("us", tz="UTC")
    assert t.column("path").to_pylist() == paths
    np.testing.assert_array_equal(vectors_of(t), v)
    assert t.column("width").to_pylist() == list(range(10, 20))
    assert set(t.column("model").to_pylist()) == {"m:1"}


def test_numbering_continues_and_prefixes_do_not_collide(tmp_path):
    _write(tmp_path, 3)
    wr2, _, _ = _write(tmp_path, 3, start=3)
    wr3, _, _ = _write(tmp_path, 2, start=6, prefix="part-w2")
    assert wr2.written[0].name == "part-00002.parquet"
    assert wr3.written[0].name == "part-w2-00001.parquet"
    assert read_embeddings(tmp_path).num_rows == 8


def test_publish_never_overwrites_an_existing_part(tmp_path, monkeypatch):
    _write(tmp_path, 2)
    first = list_parts(tmp_path)[0]
    before = first.read_bytes()
    # a concurrent writer with the same prefix saw the same "next" number: the link must fail, not overwrite
    real_link, calls = emb.os.link, []

    def racing_link(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            return real_link(src, first)
        return real_link(src, dst)

    monkeypatch.setattr(emb.os, "link", racing_link)
    wr, _, _ = _write(tmp_path, 2, start=2)
    assert first.read_bytes() == before
    assert wr.written[0].name == "part-00003.parquet"


def test_latest_row_wins(tmp_path):
    _write(tmp_path, 5, seed=1)
    paths, _, w, h = _rows(2, start=1)
    newer = np.full((2, 4), 9.0, np.float32)
    with EmbeddingWriter(tmp_path, 4, "m:1", prefix="rerun") as wr:
        wr.add(paths, newer, w, h)
        wr.add(paths[:1], np.full((1, 4), 5.0, np.float32), w[:1], h[:1])  # same writer, later add wins
    t = read_embeddings(tmp_path)
    assert t.num_rows == 5
    got = dict(zip(t.column("path").to_pylist(), vectors_of(t)))
    np.testing.assert_array_equal(got["sub/img001.png"], np.full(4, 5.0))
    np.testing.assert_array_equal(got["sub/img002.png"], np.full(4, 9.0))
    only = read_embeddings(tmp_path, paths=["sub/img002.png"], columns=["path", "vector"])
    assert only.column("path").to_pylist() == ["sub/img002.png"]
    np.testing.assert_array_equal(vectors_of(only)[0], np.full(4, 9.0))


def test_float16_parts_read_with_float32_parts(tmp_path):
    _, _, v16 = _write(tmp_path, 3, dtype="float16", prefix="half")
    _write(tmp_path, 2, start=3)
    t = read_embeddings(tmp_path)
    assert t.schema.field("vector").type.value_type == pa.float32()
    # the float16 part itself keeps halffloat on disk
    assert pq.read_schema(list_parts(tmp_path)[0]).field("vector").type.value_type == pa.float16()
    got = dict(zip(t.column("path").to_pylist(), vectors_of(t)))
    np.testing.assert_allclose(got["sub/img000.png"], v16[0], rtol=1e-3, atol=1e-3)


def test_crash_between_write_and_rename_leaves_no_part(tmp_path, monkeypatch):
    _write(tmp_path, 2)

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(emb.os, "link", crash)
    paths, v, w, h = _rows(3, start=10)
    wr = EmbeddingWriter(tmp_path, 4, "m:1")
    wr.add(paths, v, w, h)
    with pytest.raises(OSError, match="simulated"):
        wr.flush()
    assert [p.name for p in list_parts(tmp_path)] == ["part-00001.parquet"]
    assert not [p for p in (tmp_path / "embeddings").iterdir() if p.name.endswith(".tmp")]
    assert read_embeddings(tmp_path).num_rows == 2
    assert len(wr) == 3  # rows stay buffered: nothing was lost
    monkeypatch.undo()
    wr.close()
    assert read_embeddings(tmp_path).num_rows == 5


def test_half_written_temp_file_is_invisible(tmp_path):
    _write(tmp_path, 2)
    # what a killed writer leaves behind: a truncated hidden temp file
    (tmp_path / "embeddings" / ".part.deadbeef.tmp").write_bytes(b"PAR1\x00\x00")
    assert len(list_parts(tmp_path)) == 1
    assert read_embeddings(tmp_path).num_rows == 2


def test_batches_and_columns(tmp_path):
    _write(tmp_path, 10, rows_per_part=6)
    batches = list(iter_embedding_batches(tmp_path, batch_rows=4, columns=["path"]))
    assert [b.num_rows for b in batches] == [4, 2, 4]
    assert batches[0].column_names == ["path"]
    assert read_embeddings(tmp_path / "nothing-here").num_rows == 0
    with pytest.raises(EmbeddingsError, match="unknown embeddings columns"):
        read_embeddings(tmp_path, columns=["vectors"])


@pytest.mark.parametrize("bad", ["shape", "nan", "absolute", "lengths"])
def test_writer_rejects_bad_rows(tmp_path, bad):
    paths, v, w, h = _rows(2)
    if bad == "shape":
        v = v[:, :3]
    elif bad == "nan":
        v[1, 0] = np.nan
    elif bad == "absolute":
        paths[0] = "/abs/x.png"
    else:
        w = w[:1]
    wr = EmbeddingWriter(tmp_path, 4, "m:1")
    with pytest.raises(EmbeddingsError):
        wr.add(paths, v, w, h)
    assert len(wr) == 0


def test_writer_rejects_bad_settings(tmp_path):
    with pytest.raises(EmbeddingsError, match="dtype"):
        EmbeddingWriter(tmp_path, 4, "m:1", dtype="float64")
    with pytest.raises(EmbeddingsError, match="prefix"):
        EmbeddingWriter(tmp_path, 4, "m:1", prefix="../x")
    with pytest.raises(EmbeddingsError, match="name:version"):
        EmbeddingWriter(tmp_path, 4, "m")
