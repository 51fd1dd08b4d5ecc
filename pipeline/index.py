"""FAISS index over OUT_DIR/embeddings (exact or IVF, cosine or L2), built incrementally, swapped atomically.

Layout of OUT_DIR/index/:
  index.json            the commit point, replaced atomically (os.replace) once a version is complete: kind,
                        metric, dim, count, model, the parts included (size, mtime), built_at, and `files`
                        naming the version folder that holds the data
  v-<ns>-<hex>/         one immutable version: index.faiss (IndexIDMap2(Flat) or IndexIVFFlat, int64 ids)
                        and ids.parquet (id, path, written_at, part)
A reader loads index.json once and opens the files it names, so it never sees a half-written index; the
previous version is kept for readers in flight, older ones are deleted. Builders are serialised by a lock.
Reading it (opening, queries, search) is pipeline/search.py.

Incremental rule: a later `build_index` adds only the rows of parts not yet included. A path that is already
indexed and comes back in a newer row (a rerun re-embedded it) is replaced in place: its old id is removed
(`remove_ids`) and the new vector added under a new id, so no full rebuild is needed; a row older than the
indexed one for its path (a slow worker's late part) is skipped ("stale"). A full rebuild happens when an
included part changed or vanished, when an explicit kind/metric differs from the index's (explicit choices
stick across plain reruns), when an automatic exact index grows past `ivf_threshold`, when an IVF index grows
past 4x the rows its centroids were trained on, when new vectors are no longer unit-length under an automatic
cosine metric, or when rebuild=True. Embeddings of another model than the index's are refused unless rebuild.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from aeflow import storage
from aeflow.files import write_json
from pipeline.embeddings import (
    EMBEDDINGS_DIR,
    EmbeddingsError,
    concat_embeddings,
    iter_latest_parts,
    list_parts,
    vectors_of,
)

INDEX_DIR = "index"
META = "index.json"
FORMAT = 1
KINDS = ("auto", "flat", "ivf")
METRICS = ("auto", "ip", "l2")
# Exact search up to here: 50k x 512 floats is 100 MB and a brute-force query still takes milliseconds.
DEFAULT_IVF_THRESHOLD = 50_000
# Vectors whose norms are all within this of 1 are taken as L2-normalised (float16 parts stay well inside it).
NORM_TOL = 1e-2
_ADD_CHUNK = 65_536


class IndexMismatchError(EmbeddingsError):
    """Embeddings (or a query model) that do not belong to the existing index's model."""


def _faiss():
    """Import faiss with its loader's INFO chatter (AVX512/AVX2 probing) silenced under the CLI's logging."""
    import logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _index_dir(out_dir) -> Path:
    return Path(out_dir) / INDEX_DIR


def load_meta(out_dir) -> dict | None:
    """The committed index.json of OUT_DIR/index, or None when no index was built."""
    f = _index_dir(out_dir) / META
    return json.loads(f.read_text()) if f.is_file() else None


@contextlib.contextmanager
def _lock(folder: Path):
    import fcntl

    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # one builder at a time; readers never lock
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _part_info(p: Path) -> dict:
    import pyarrow.parquet as pq

    st = p.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "rows": pq.read_metadata(p).num_rows}


def _is_normalised(x: np.ndarray) -> bool:
    return len(x) > 0 and bool(np.all(np.abs(np.linalg.norm(x, axis=1) - 1.0) < NORM_TOL))


def _models(table) -> dict[str, int]:
    import pyarrow.compute as pc

    counts = pc.value_counts(table.column("model")).to_pylist()
    return {c["values"]: c["counts"] for c in counts}


def _single_model(table, what: str) -> str:
    models = _models(table)
    if len(models) != 1:
        listing = ", ".join(f"{m} ({n} rows)" for m, n in sorted(models.items()))
        raise IndexMismatchError(f"{what} mix models: {listing}; one index holds one model's vectors: re-embed "
                                 "everything with one model or move the other model's parts out of embeddings/")
    return next(iter(models))


def _auto_nlist(n: int) -> int:
    # ~4 sqrt(N) lists, but at least 39 training points per centroid (FAISS's own minimum)
    return int(max(1, min(4 * np.sqrt(n), n // 39)))


def _new_index(kind: str, metric: str, dim: int, nlist: int):
    faiss = _faiss()

    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    flat = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    if kind == "flat":
        return faiss.IndexIDMap2(flat)  # IDMap2: stable ids, remove_ids and reconstruct work
    return faiss.IndexIVFFlat(flat, dim, nlist, faiss_metric)


def prepare_vectors(x: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous, and unit-length for the inner-product (cosine) metric."""
    faiss = _faiss()

    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "ip":
        x = x.copy()
        faiss.normalize_L2(x)
    return x


def _add(index, x: np.ndarray, ids: np.ndarray, progress: bool) -> None:
    from tqdm import tqdm

    with tqdm(total=len(x), desc="index add", unit="vec", disable=not progress or len(x) < _ADD_CHUNK) as bar:
        for s in range(0, len(x), _ADD_CHUNK):
            index.add_with_ids(x[s:s + _ADD_CHUNK], ids[s:s + _ADD_CHUNK])
            bar.update(min(_ADD_CHUNK, len(x) - s))


def build_index(out_dir, kind: str = "auto", metric: str = "auto", *, rebuild: bool = False,
                ivf_threshold: int = DEFAULT_IVF_THRESHOLD, nlist: int | None = None, nprobe: int | None = None,
                progress: bool = True) -> dict:
    """Build or update OUT_DIR/index from OUT_DIR/embeddings; returns index.json plus action/reason/added/replaced.

    kind: "flat" (exact), "ivf" (IndexIVFFlat, trained on a sample) or "auto" (flat below ivf_threshold rows).
    metric: "ip" (cosine: vectors are L2-normalised), "l2", or "auto" (ip when every stored norm is ~1).
    Refuses embeddings of another model than the index's (IndexMismatchError) unless rebuild=True.
    An s3:// OUT_DIR is built in a local mirror (storage.mirrored) and its index/ uploaded back.
    """
    with storage.mirrored(out_dir, pull=(EMBEDDINGS_DIR, INDEX_DIR), push=(INDEX_DIR,)) as out:
        return _build_index(out, kind, metric, rebuild, ivf_threshold, nlist, nprobe, progress)


def _build_index(out_dir, kind, metric, rebuild, ivf_threshold, nlist, nprobe, progress) -> dict:
    if kind not in KINDS:
        raise EmbeddingsError(f"kind must be one of {KINDS}, not {kind!r}")
    if metric not in METRICS:
        raise EmbeddingsError(f"metric must be one of {METRICS}, not {metric!r}")
    out = Path(out_dir)
    parts = list_parts(out)  # snapshot: parts published while we build are picked up next time
    if not parts:
        raise EmbeddingsError(f"no embeddings in {out / 'embeddings'}: run `aeflow embed` into {out} first")
    idx_dir = _index_dir(out)
    idx_dir.mkdir(parents=True, exist_ok=True)
    with _lock(idx_dir):
        meta = load_meta(out)
        if meta is not None and not rebuild:
            # an explicit kind/metric sticks: a later plain `aeflow index` keeps it until --rebuild
            kind = meta.get("requested_kind", "auto") if kind == "auto" else kind
            metric = meta.get("requested_metric", "auto") if metric == "auto" else metric
        reason = "no index yet" if meta is None else ("rebuild requested" if rebuild else None)
        if reason is None:
            reason = _rebuild_reason(meta, parts, kind, metric)
        if reason is None:
            new_parts = [p for p in parts if p.name not in meta["parts"]]
            if not new_parts:
                return {**meta, "action": "unchanged", "reason": "no new embedding parts", "added": 0, "replaced": 0,
                        "stale": 0}
            result = _update(out, meta, new_parts, kind, metric, ivf_threshold, progress)
            if isinstance(result, dict):
                return result
            reason = result  # the update found it needs a full rebuild
        return _full_build(out, meta, parts, kind, metric, rebuild, ivf_threshold, nlist, nprobe, progress, reason)


def _rebuild_reason(meta: dict, parts: list[Path], kind: str, metric: str) -> str | None:
    if meta.get("format") != FORMAT:
        return f"index format {meta.get('format')} is not {FORMAT}"
    if kind != "auto" and kind != meta["kind"]:
        return f"kind {kind} requested, index is {meta['kind']}"
    if metric != "auto" and metric != meta["metric"]:
        return f"metric {metric} requested, index uses {meta['metric']}"
    current = {p.name: p for p in parts}
    for name, info in meta["parts"].items():
        p = current.get(name)
        if p is None:
            return f"part {name} was removed"
        st = p.stat()
        if st.st_size != info["size"] or st.st_mtime_ns != info["mtime_ns"]:
            return f"part {name} changed on disk"
    return None


def _load_rows(parts):
    """Latest rows of `parts` (path, vector, model, written_at) plus the name of the part each row came from."""
    import pyarrow as pa

    tables, names = [], []
    for p, t in iter_latest_parts(parts, ["path", "vector", "model", "written_at"]):
        tables.append(t)
        names += [p.name] * t.num_rows
    if not tables:
        raise EmbeddingsError(f"the parts {', '.join(p.name for p in parts)} hold no rows")
    table = concat_embeddings(tables)
    return table.append_column("part", pa.array(names, pa.string()))


def _full_build(out: Path, old_meta: dict | None, parts, kind, metric, rebuild, ivf_threshold, nlist, nprobe,
                progress, reason) -> dict:
    import pyarrow as pa

    rows = _load_rows(parts)
    model = _single_model(rows, f"the embeddings in {out / 'embeddings'}")
    if old_meta is not None and old_meta["model"] != model and not rebuild:
        raise IndexMismatchError(f"{out / INDEX_DIR} indexes model {old_meta['model']} but the embeddings now come "
                                 f"from {model}; refusing to mix them: rebuild the index (--rebuild) to switch")
    x = vectors_of(rows)
    n, dim = x.shape
    requested = {"requested_kind": kind, "requested_metric": metric}
    if metric == "auto":
        metric = "ip" if _is_normalised(x) else "l2"
    if kind == "auto":
        kind = "ivf" if n >= ivf_threshold else "flat"
    x = prepare_vectors(x, metric)
    nl = min(nlist or _auto_nlist(n), n) if kind == "ivf" else 0
    index = _new_index(kind, metric, dim, nl)
    if kind == "ivf":
        # k-means on a sample: 50 points per list is plenty for the centroids and bounds training time
        rng = np.random.default_rng(0)
        index.train(x if n <= 50 * nl else x[np.sort(rng.choice(n, 50 * nl, replace=False))])
        index.nprobe = min(nl, nprobe or max(8, nl // 16))
    ids = np.arange(n, dtype=np.int64)
    _add(index, x, ids, progress)
    now = _now()
    meta = {"format": FORMAT, "kind": kind, "metric": metric, "score": "cosine" if metric == "ip" else "neg_l2",
            "dim": int(dim), "count": int(index.ntotal), "model": model, "nlist": int(nl),
            "nprobe": int(index.nprobe) if kind == "ivf" else 0, "trained_on": int(n) if kind == "ivf" else 0,
            "ivf_threshold": int(ivf_threshold), **requested,
            "parts": {p.name: _part_info(p) for p in parts}, "built_at": now, "updated_at": now, "next_id": int(n)}
    id_table = pa.table({"id": ids, "path": rows.column("path"), "written_at": rows.column("written_at"),
                         "part": rows.column("part")})
    meta = _commit(out, old_meta, meta, index, id_table)
    return {**meta, "action": "built" if old_meta is None else "rebuilt", "reason": reason, "added": int(n),
            "replaced": 0, "stale": 0}


def _update(out: Path, meta: dict, new_parts, kind, metric, ivf_threshold, progress) -> dict | str:
    """Add the rows of new parts to the index; returns the new meta, or a reason string when a rebuild is needed."""
    import pyarrow as pa

    new = _load_rows(new_parts)
    model = _single_model(new, "the new embedding parts " + ", ".join(p.name for p in new_parts))
    if model != meta["model"]:
        raise IndexMismatchError(f"{out / INDEX_DIR} indexes model {meta['model']} but new parts "
                                 f"({', '.join(p.name for p in new_parts)}) come from {model}; refusing to mix them: "
                                 "rebuild the index (--rebuild) to switch models")
    x = vectors_of(new)
    if x.shape[1] != meta["dim"]:
        raise IndexMismatchError(f"new vectors have {x.shape[1]} dimensions, the index {meta['dim']}")
    if meta["metric"] == "ip" and metric == "auto" and not _is_normalised(x):
        return "new vectors are not unit-length, so cosine no longer fits: rebuilding with auto metric"
    index, ids_tab = open_files(out, meta)
    pos = {p: i for i, p in enumerate(ids_tab.column("path").to_pylist())}
    old_ids = ids_tab.column("id").to_numpy()
    old_wt = _micros(ids_tab.column("written_at"))
    new_wt = _micros(new.column("written_at"))
    keep = np.zeros(len(x), bool)
    drop = np.zeros(len(old_ids), bool)
    for j, p in enumerate(new.column("path").to_pylist()):
        i = pos.get(p)
        if i is None or new_wt[j] >= old_wt[i]:  # a newer row for an indexed path replaces it
            keep[j] = True
            if i is not None:
                drop[i] = True
    replaced, stale = int(drop.sum()), int((~keep).sum())
    count = int(index.ntotal) - replaced + int(keep.sum())
    if kind == "auto" and meta["kind"] == "flat" and count >= ivf_threshold:
        return f"{count} vectors reach the IVF threshold {ivf_threshold}: rebuilding as ivf"
    if meta["kind"] == "ivf" and count > 4 * meta["trained_on"]:
        # centroids trained on a quarter of the data or less no longer balance the lists: retrain
        return f"{count} vectors, IVF trained on {meta['trained_on']}: retraining"
    if replaced:
        index.remove_ids(np.ascontiguousarray(old_ids[drop]))
    new_ids = np.arange(meta["next_id"], meta["next_id"] + int(keep.sum()), dtype=np.int64)
    _add(index, prepare_vectors(x[keep], meta["metric"]), new_ids, progress)
    added_rows = new.filter(pa.array(keep)).select(["path", "written_at", "part"])
    id_table = pa.concat_tables([
        ids_tab.filter(pa.array(~drop)),
        pa.table({"id": new_ids, **{c: added_rows.column(c) for c in added_rows.column_names}}),
    ])
    parts = {**meta["parts"], **{p.name: _part_info(p) for p in new_parts}}
    upd = {**meta, "count": int(index.ntotal), "parts": parts, "updated_at": _now(),
           "next_id": int(new_ids[-1] + 1) if len(new_ids) else meta["next_id"]}
    upd = _commit(out, meta, upd, index, id_table)
    return {**upd, "action": "updated", "reason": f"{len(new_parts)} new part(s)",
            "added": int(keep.sum()) - replaced, "replaced": replaced, "stale": stale}


def _micros(col) -> np.ndarray:
    return col.to_numpy().astype("datetime64[us]").astype(np.int64)


def _commit(out: Path, old_meta: dict | None, meta: dict, index, id_table) -> dict:
    """Write a new version folder, then point index.json at it (the atomic step), then drop old versions."""
    faiss = _faiss()
    import pyarrow.parquet as pq

    idx_dir = _index_dir(out)
    name = f"v-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    tmp = idx_dir / f".tmp-{name}"
    tmp.mkdir()
    try:
        faiss.write_index(index, str(tmp / "index.faiss"))
        pq.write_table(id_table.sort_by("id"), tmp / "ids.parquet")
        os.rename(tmp, idx_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta = {**meta, "files": {"index": f"{name}/index.faiss", "ids": f"{name}/ids.parquet"}}
    f = idx_dir / META
    write_json(f, meta)
    # keep the previous version for readers that loaded the old index.json; builders hold the lock
    keep = {name, old_meta["files"]["index"].split("/")[0] if old_meta and "files" in old_meta else ""}
    for d in idx_dir.iterdir():
        if d.is_dir() and d.name not in keep and (d.name.startswith("v-") or d.name.startswith(".tmp-")):
            shutil.rmtree(d, ignore_errors=True)
    return meta


def open_files(out: Path, meta: dict):
    """Load the faiss index and the id table a meta names."""
    faiss = _faiss()
    import pyarrow.parquet as pq

    idx_dir = _index_dir(out)
    index = faiss.read_index(str(idx_dir / meta["files"]["index"]))
    if meta["kind"] == "ivf":
        index.nprobe = int(meta["nprobe"])
    return index, pq.read_table(idx_dir / meta["files"]["ids"])
