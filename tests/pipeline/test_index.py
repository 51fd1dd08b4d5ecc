"""Tests for pipeline/index.py: exact and IVF FAISS indexes, incremental updates, atomic swaps, search."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aeflow.store import ModelStore
from pipeline.embeddings import EmbeddingsError, EmbeddingWriter
from pipeline.index import IndexMismatchError, build_index, load_meta
from pipeline.search import _embed_image, search
from tests.conftest import make_photo

S, C, D, N = 8, 3, 16, 50


def _encoder_onnx(path, seed: int) -> None:
    """Tiny encoder per docs/architecture.md: uint8 [N,8,8,3] -> cast -> reshape -> matmul -> L2 norm -> [N,16]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(size=(S * S * C, D)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["z"]),
        helper.make_node("ReduceL2", ["z"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["z", "norm"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", S, S, C])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", D])],
        initializer=[numpy_helper.from_array(np.array([-1, S * S * C], np.int64), "shape"),
                     numpy_helper.from_array(w, "w")])
    # ir_version 10: onnx 1.23 defaults to IR 14, which onnxruntime 1.31 cannot load (max 13)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    meta = {"aeflow.kind": "ae", "aeflow.role": "encoder", "aeflow.input_size": str(S),
            "aeflow.channels": str(C), "aeflow.latent_dim": str(D), "aeflow.normalized": "1"}
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with two tiny encoders (tiny:1, tiny:2) and a folder of N small photos of mixed sizes."""
    root = tmp_path_factory.mktemp("index-world")
    store = ModelStore(root / "store", include_shipped=False)
    for seed in (1, 2):
        src = root / f"build{seed}"
        src.mkdir()
        _encoder_onnx(src / "model.onnx", seed)
        store.register("tiny", src, card={"kind": "ae"})
    photos = root / "photos"
    photos.mkdir()
    for i in range(N):
        h, w = (12 + i % 5, 10 + i % 7)
        Image.fromarray(make_photo(h, w, seed=100 + i)).save(photos / f"img{i:02d}.png")
    return {"store": store.root, "photos": photos, "onnx": {v: store.get("tiny", v).onnx_path() for v in (1, 2)}}


def _embed(world, out, names, version=1, prefix="part", as_path=None):
    """Embed photo files with _embed_image (the search code path) into EmbeddingWriter parts."""
    vecs = np.stack([_embed_image(world["onnx"][version], world["photos"] / n) for n in names])
    with EmbeddingWriter(out, dim=D, model_id=f"tiny:{version}", prefix=prefix) as wr:
        wr.add(list(as_path or names), vecs, [1] * len(names), [1] * len(names))
    return vecs


def _names(a, b):
    return [f"img{i:02d}.png" for i in range(a, b)]


def test_flat_index_search_by_image_and_path(world, tmp_path):
    _embed(world, tmp_path, _names(0, N))
    info = build_index(tmp_path)
    assert (info["action"], info["kind"], info["metric"], info["count"]) == ("built", "flat", "ip", N)
    meta = load_meta(tmp_path)
    assert meta["model"] == "tiny:1" and meta["dim"] == D and meta["parts"]["part-00001.parquet"]["rows"] == N
    assert (tmp_path / "index" / meta["files"]["index"]).is_file()

    hits = search(tmp_path, image=world["photos"] / "img07.png", k=5, store=world["store"])
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["path"] == "img07.png" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))

    by_path = search(tmp_path, path="./img03.png", k=3, store=world["store"])
    assert by_path[0]["path"] == "img03.png" and by_path[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(search(tmp_path, path="img03.png", k=500)) == N  # k larger than the index

    assert build_index(tmp_path)["action"] == "unchanged"
    with pytest.raises(EmbeddingsError, match="no embedding"):
        search(tmp_path, path="missing.png")
    with pytest.raises(EmbeddingsError, match="exactly one"):
        search(tmp_path)


def test_incremental_add_and_superseded_rows(world, tmp_path):
    _embed(world, tmp_path, _names(0, 30))
    build_index(tmp_path)
    # a second run: 20 new files, and img05 re-embedded from different pixels (img45's) under its old path
    _embed(world, tmp_path, _names(30, 45))
    _embed(world, tmp_path, ["img45.png"], as_path=["img05.png"])
    info = build_index(tmp_path)
    assert (info["action"], info["added"], info["replaced"], info["count"]) == ("updated", 15, 1, 45)
    ids = pq.read_table(tmp_path / "index" / info["files"]["ids"]).column("path").to_pylist()
    assert len(ids) == len(set(ids)) == 45

    hit = search(tmp_path, image=world["photos"] / "img45.png", k=1, store=world["store"])[0]
    assert hit["path"] == "img05.png" and hit["score"] == pytest.approx(1.0, abs=1e-5)
    old = search(tmp_path, image=world["photos"] / "img05.png", k=1, store=world["store"])[0]
    assert old["score"] < 0.9999  # the superseded vector is gone from the index

    incremental = search(tmp_path, path="img31.png", k=10)
    rebuilt = build_index(tmp_path, rebuild=True)
    assert rebuilt["action"] == "rebuilt" and rebuilt["count"] == 45
    assert [h["path"] for h in search(tmp_path, path="img31.png", k=10)] == [h["path"] for h in incremental]


def test_ivf_index_with_low_threshold(world, tmp_path):
    _embed(world, tmp_path, _names(0, 40))
    info = build_index(tmp_path, ivf_threshold=10, nlist=4)
    assert (info["kind"], info["nlist"], info["count"]) == ("ivf", 4, 40)
    hit = search(tmp_path, image=world["photos"] / "img11.png", k=3, store=world["store"])[0]
    assert hit["path"] == "img11.png" and hit["score"] == pytest.approx(1.0, abs=1e-5)
    # incremental add and a superseded row on IVF (remove_ids on the inverted lists)
    _embed(world, tmp_path, _names(40, 49))
    _embed(world, tmp_path, ["img49.png"], as_path=["img02.png"])
    info = build_index(tmp_path, ivf_threshold=10)
    assert (info["action"], info["kind"], info["added"], info["replaced"], info["count"]) == (
        "updated", "ivf", 9, 1, 49)
    assert search(tmp_path, image=world["photos"] / "img49.png", k=1, store=world["store"])[0]["path"] == "img02.png"


def test_stale_rows_and_removed_parts(world, tmp_path):
    import pyarrow as pa

    _embed(world, tmp_path, _names(0, 10))
    build_index(tmp_path)
    # a part published late whose row is OLDER than the indexed one (e.g. a slow worker): latest row still wins
    _embed(world, tmp_path, ["img20.png", "img11.png"], as_path=["img03.png", "img11.png"], prefix="late")
    late = tmp_path / "embeddings" / "late-00001.parquet"
    t = pq.read_table(late)
    old = pa.array([0, 0], pa.timestamp("us", tz="UTC"))
    pq.write_table(t.set_column(t.schema.get_field_index("written_at"), "written_at", old), late)
    info = build_index(tmp_path)
    assert (info["action"], info["added"], info["replaced"], info["stale"], info["count"]) == (
        "updated", 1, 0, 1, 11)
    assert search(tmp_path, image=world["photos"] / "img03.png", k=1, store=world["store"])[0]["score"] == (
        pytest.approx(1.0, abs=1e-5))
    # a part that disappears takes its rows with it: full rebuild
    late.unlink()
    info = build_index(tmp_path)
    assert (info["action"], info["count"]) == ("rebuilt", 10) and "removed" in info["reason"]


def test_flat_index_grows_into_ivf(world, tmp_path):
    _embed(world, tmp_path, _names(0, 20))
    assert build_index(tmp_path, ivf_threshold=30)["kind"] == "flat"
    _embed(world, tmp_path, _names(20, 40))
    info = build_index(tmp_path, ivf_threshold=30)
    assert (info["action"], info["kind"], info["count"]) == ("rebuilt", "ivf", 40)
    assert "threshold" in info["reason"]


def test_explicit_kind_and_metric_stick(world, tmp_path):
    _embed(world, tmp_path, _names(0, 20))
    assert build_index(tmp_path, kind="flat", metric="l2", ivf_threshold=10)["kind"] == "flat"
    _embed(world, tmp_path, _names(20, 30))
    info = build_index(tmp_path, ivf_threshold=10)  # a plain rerun keeps the explicit choices
    assert (info["action"], info["kind"], info["metric"], info["count"]) == ("updated", "flat", "l2", 30)
    info = build_index(tmp_path, kind="ivf", nlist=2)  # a different explicit kind rebuilds
    assert (info["action"], info["kind"], info["metric"]) == ("rebuilt", "ivf", "l2")
    assert "kind ivf requested" in info["reason"]


def test_ivf_retrains_after_growing_4x(world, tmp_path):
    _embed(world, tmp_path, _names(0, 10))
    assert build_index(tmp_path, ivf_threshold=5, nlist=2)["trained_on"] == 10
    _embed(world, tmp_path, _names(10, 50))
    info = build_index(tmp_path, ivf_threshold=5)
    assert (info["action"], info["kind"], info["trained_on"], info["count"]) == ("rebuilt", "ivf", 50, 50)


def test_mixing_models_is_refused(world, tmp_path):
    _embed(world, tmp_path, _names(0, 20), version=1)
    build_index(tmp_path)
    _embed(world, tmp_path, _names(0, 20), version=2)  # every path re-embedded with tiny:2
    with pytest.raises(IndexMismatchError, match="--rebuild"):
        build_index(tmp_path)
    assert load_meta(tmp_path)["model"] == "tiny:1"
    info = build_index(tmp_path, rebuild=True)
    assert (info["model"], info["count"]) == ("tiny:2", 20)
    hit = search(tmp_path, image=world["photos"] / "img04.png", k=1, store=world["store"])[0]
    assert hit["path"] == "img04.png" and hit["score"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(IndexMismatchError, match="not comparable"):
        search(tmp_path, image=world["photos"] / "img04.png", model="tiny:1", store=world["store"])
    # half the paths on another model: even a rebuild refuses to put both in one index
    _embed(world, tmp_path, _names(0, 5), version=1, prefix="old")
    with pytest.raises(IndexMismatchError, match="mix models"):
        build_index(tmp_path, rebuild=True)


def test_crash_during_commit_keeps_the_old_index(world, tmp_path, monkeypatch):
    _embed(world, tmp_path, _names(0, 10))
    before = build_index(tmp_path)
    _embed(world, tmp_path, _names(10, 20))
    import faiss

    def crash(index, fname):
        open(fname, "wb").write(b"half")  # a partial file, then the process "dies"
        raise RuntimeError("simulated crash while writing the index")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        build_index(tmp_path)
    monkeypatch.undo()
    assert load_meta(tmp_path)["files"] == before["files"]
    assert len(search(tmp_path, path="img01.png", k=50)) == 10  # readers still get the complete old index
    assert not [p for p in (tmp_path / "index").iterdir() if p.name.startswith(".tmp-")]
    after = build_index(tmp_path)
    assert (after["action"], after["count"]) == ("updated", 20)
    # the previous version stays for readers in flight; older ones are deleted
    versions = sorted(p.name for p in (tmp_path / "index").iterdir() if p.name.startswith("v-"))
    assert len(versions) == 2 and after["files"]["index"].split("/")[0] in versions


def test_unnormalised_vectors_use_l2(tmp_path):
    rng = np.random.default_rng(3)
    v = rng.normal(size=(12, 6)).astype(np.float32) * 5
    with EmbeddingWriter(tmp_path, dim=6, model_id="raw:1") as wr:
        wr.add([f"r{i}.png" for i in range(12)], v, [1] * 12, [1] * 12)
    info = build_index(tmp_path)
    assert (info["metric"], info["score"]) == ("l2", "neg_l2")
    hits = search(tmp_path, path="r4.png", k=12)
    assert hits[0]["path"] == "r4.png" and hits[0]["score"] == pytest.approx(0.0, abs=1e-4)
    want = np.argsort(np.linalg.norm(v - v[4], axis=1))
    assert [h["path"] for h in hits] == [f"r{i}.png" for i in want]
    np.testing.assert_allclose([-h["score"] for h in hits], np.sort(np.linalg.norm(v - v[4], axis=1)), atol=1e-3)


def test_bad_requests(tmp_path):
    with pytest.raises(EmbeddingsError, match="aeflow embed"):
        build_index(tmp_path)
    with pytest.raises(EmbeddingsError, match="kind"):
        build_index(tmp_path, kind="hnsw")
    with pytest.raises(EmbeddingsError, match="aeflow index"):
        search(tmp_path, path="x.png")


def test_embed_job_then_index_then_search(world, tmp_path):
    """The embed job (local runner) and search embed an image identically: a file finds itself with score ~1."""
    from pipeline.runner import JobConfig, run_job

    out = tmp_path / "out"
    summary = run_job(JobConfig(job="embed", in_dir=world["photos"], out_dir=out, model="tiny:1",
                                store=world["store"], device="cpu", runner="local", progress=False))
    assert summary["counts"]["ok"] == N
    info = build_index(out)
    assert (info["count"], info["model"], info["metric"]) == (N, "tiny:1", "ip")
    hit = search(out, image=world["photos"] / "img23.png", k=2, store=world["store"])[0]
    assert hit["path"] == "img23.png" and hit["score"] == pytest.approx(1.0, abs=1e-5)
