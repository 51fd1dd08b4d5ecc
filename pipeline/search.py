"""Searching the index pipeline/index.py builds: open its committed version, query it by a stored path or an image."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aeflow import storage
from pipeline.embeddings import EMBEDDINGS_DIR, EmbeddingsError, read_embeddings, vectors_of
from pipeline.index import INDEX_DIR, IndexMismatchError, load_meta, open_files, prepare_vectors


def open_committed(out: Path):
    """(meta, index, ids) of the committed index; retried if a builder swapped versions while we opened it."""
    for attempt in range(3):
        meta = load_meta(out)
        if meta is None:
            raise EmbeddingsError(f"no index in {out / INDEX_DIR}: run `aeflow index {out}` first")
        try:
            return (meta, *open_files(out, meta))
        except (FileNotFoundError, RuntimeError):
            if attempt == 2 or load_meta(out) == meta:
                raise
    raise AssertionError("unreachable")


def open_index(out_dir):
    """(meta, faiss index, ids table) of OUT_DIR's committed index (a local folder or a mirror), for dedup."""
    return open_committed(Path(out_dir))


def search(out_dir, *, image: Path | None = None, path: str | None = None, k: int = 10, model: str | None = None,
           store: Path | None = None) -> list[dict]:
    """The k nearest indexed images to a stored path or a new image file: [{rank, path, score}], best first.

    score is the cosine similarity for a cosine ("ip") index and the negative L2 distance for an "l2" index:
    higher is closer in both (index.json's `score` says which). The query itself is not excluded.
    """
    if (image is None) == (path is None):
        raise EmbeddingsError("search needs exactly one query: an image file or the stored path of an embedded image")
    if int(k) < 1:
        raise EmbeddingsError(f"k must be >= 1, not {k}")
    with storage.mirrored(out_dir, pull=(EMBEDDINGS_DIR, INDEX_DIR)) as out:  # s3://: a local mirror
        return _search(out, image, path, k, model, store)


def _search(out: Path, image, path, k, model, store) -> list[dict]:
    meta, index, ids_tab = open_committed(out)
    q = _stored_vector(out, path, meta) if path is not None else _query_vector(Path(image), meta, model, store)
    if q.shape != (meta["dim"],):
        raise IndexMismatchError(f"query vector has shape {q.shape}, the index holds {meta['dim']}-d vectors")
    dist, idx = index.search(prepare_vectors(q[None], meta["metric"]), min(int(k), int(index.ntotal)) or 1)
    ids = ids_tab.column("id").to_numpy()
    paths = ids_tab.column("path")
    results = []
    for d, i in zip(dist[0], idx[0]):
        if i < 0:  # fewer than k vectors reachable (small or sparsely probed IVF lists)
            continue
        j = int(np.searchsorted(ids, i))
        score = float(d) if meta["metric"] == "ip" else -float(np.sqrt(max(float(d), 0.0)))
        results.append({"rank": len(results) + 1, "path": paths[j].as_py(), "score": score})
    return results


def _normalise_rel(path: str) -> str:
    return "/".join(s for s in str(path).replace("\\", "/").split("/") if s not in ("", "."))


def _stored_vector(out: Path, path: str, meta: dict) -> np.ndarray:
    key = _normalise_rel(path)
    t = read_embeddings(out, columns=["path", "vector", "model"], paths=[key])
    if t.num_rows == 0:
        raise EmbeddingsError(f"{path!r} has no embedding in {out / 'embeddings'} (paths are relative to the embed "
                              "job's input folder, e.g. 'sub/cat.jpg'); search with an image file instead")
    m = t.column("model")[0].as_py()
    if m != meta["model"]:
        raise IndexMismatchError(f"the stored vector of {key!r} comes from {m}, the index from {meta['model']}: "
                                 f"update the index (`aeflow index {out}`, --rebuild to switch models)")
    return vectors_of(t)[0]


def _query_vector(image: Path, meta: dict, model: str | None, store) -> np.ndarray:
    from aeflow.store import ModelStore

    ref = ModelStore(store).resolve(model or meta["model"])
    if ref.id != meta["model"]:
        raise IndexMismatchError(f"the index holds vectors of {meta['model']}; model {model!r} is {ref.id}, whose "
                                 "embeddings are not comparable: leave out --model to use the index's model")
    return _embed_image(ref.onnx_path(), image)


def _embed_image(onnx_path: Path, image_path: Path) -> np.ndarray:
    """Embed one image file with an encoder ONNX through the embed job's own decode and predictor code."""
    from aeflow.imageio import ImageDecodeError
    from pipeline.inference import decode_for, encoder_input
    from pipeline.predictor import Predictor

    pred = Predictor(str(onnx_path), device="cpu", threads=min(2, os.cpu_count() or 1))
    if pred.info.role != "encoder" or not pred.info.input_size:
        raise EmbeddingsError(f"{onnx_path} is not an encoder with a fixed input size (aeflow.role="
                              f"{pred.info.role!r}, aeflow.input_size={pred.info.input_size})")
    try:
        # the embed job's own decode and crop, so a query image's vector is the one the job stored
        a = decode_for(image_path, pred.info).image
    except ImageDecodeError as exc:
        raise EmbeddingsError(f"query image {image_path}: {exc}") from exc
    batch = {"image": encoder_input(a, pred.info)[None]}
    return np.asarray(pred(batch)["embedding"][0], dtype=np.float32)
