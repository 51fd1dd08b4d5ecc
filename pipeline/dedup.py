"""Near-duplicate and exact-duplicate groups over an embed job's output, from the ANN index's nearest neighbours.

    OUT_DIR/dedup/neighbours.parquet   per embedded path (and the row it was embedded in): its k nearest
                                       neighbours and their cosine similarities, whatever the threshold
    OUT_DIR/dedup/hashes.parquet       sha256 of each input file, keyed by (path, size, mtime)
    OUT_DIR/dedup/groups.parquet|csv   group, path, similarity to the group's representative, match, bytes, ...
    OUT_DIR/dedup/summary.json         counts, bytes that could be freed, the threshold and k
    OUT_DIR/dedup/index.html           the groups side by side, for a person to review (pipeline/dedup_page.py)

Pairs whose similarity reaches the threshold, and files with the same content hash, are joined into connected
components; no N×N matrix is ever formed (memory grows with N·k). A rerun queries the index only for paths
that are new or were re-embedded since the cached neighbours, and hashes only files whose size or mtime
changed; a new threshold reuses every cached neighbour list.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from aeflow import storage
from aeflow.files import atomic_path, write_text
from pipeline.embeddings import EMBEDDINGS_DIR, EmbeddingsError, iter_embedding_batches
from pipeline.index import INDEX_DIR

DEDUP_DIR = "dedup"
DEFAULT_K = 10
DEFAULT_THRESHOLD = 0.9  # used when the model's card records none (the shipped photo model's does)
_QUERY_CHUNK = 8192


def _latest_rows(out: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(paths, unit vectors, written_at µs, width, height) of the latest embedding of each path."""
    from pipeline.embeddings import vectors_of

    paths, vecs, when, ws, hs = [], [], [], [], []
    for t in iter_embedding_batches(out, columns=["path", "vector", "written_at", "width", "height"]):
        paths += t.column("path").to_pylist()
        vecs.append(vectors_of(t).astype(np.float32))
        when.append(t.column("written_at").cast("int64").to_numpy())
        ws.append(t.column("width").to_numpy())
        hs.append(t.column("height").to_numpy())
    if not paths:
        raise EmbeddingsError(f"no embeddings in {out}: run `aeflow embed IN_DIR {out}` first")
    x = np.concatenate(vecs)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return paths, x, np.concatenate(when), np.concatenate(ws), np.concatenate(hs)


def _neighbours(out: Path, paths: list[str], x: np.ndarray, when: np.ndarray, k: int, progress: bool):
    """(nbr index array N×k, similarity array N×k, how many paths were queried now) with the on-disk cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.index import prepare_vectors
    from pipeline.search import open_index

    meta, index, ids_tab = open_index(out)
    if meta["metric"] != "ip":
        raise EmbeddingsError("dedup needs a cosine index (unit-length embeddings, metric 'ip'); "
                              f"{out / 'index'} uses {meta['metric']!r}")
    pos = {p: i for i, p in enumerate(paths)}
    id_path = dict(zip(ids_tab.column("id").to_numpy().tolist(), ids_tab.column("path").to_pylist()))
    cache_file = out / DEDUP_DIR / "neighbours.parquet"
    nbr = np.full((len(paths), k), -1, np.int64)
    sim = np.zeros((len(paths), k), np.float32)
    todo = np.ones(len(paths), bool)
    if cache_file.is_file():
        c = pq.read_table(cache_file)
        if c.schema.metadata and int(c.schema.metadata.get(b"k", b"0")) >= k:
            for p, w, nps, nss in zip(c.column("path").to_pylist(), c.column("written_at").to_pylist(),
                                      c.column("nbr_paths").to_pylist(), c.column("nbr_sims").to_pylist()):
                i = pos.get(p)
                if i is None or int(w) != int(when[i]):
                    continue  # gone, or re-embedded since: query it again
                js = [(pos.get(q), s) for q, s in zip(nps[:k], nss[:k])]
                js = [(j, s) for j, s in js if j is not None]
                nbr[i, :len(js)] = [j for j, _ in js]
                sim[i, :len(js)] = [s for _, s in js]
                todo[i] = False
    queried = np.flatnonzero(todo)
    from tqdm.auto import tqdm

    for s in tqdm(range(0, len(queried), _QUERY_CHUNK), desc="dedup: neighbours", unit="chunk",
                  disable=not progress or len(queried) <= _QUERY_CHUNK, leave=False):
        rows = queried[s:s + _QUERY_CHUNK]
        d, ids = index.search(prepare_vectors(x[rows], "ip"), min(k + 1, int(index.ntotal)))
        for r, drow, irow in zip(rows, d, ids):
            got = [(pos.get(id_path.get(int(i))), float(v)) for i, v in zip(irow, drow) if i >= 0]
            got = [(j, v) for j, v in got if j is not None and j != r][:k]
            nbr[r], sim[r] = -1, 0.0
            nbr[r, :len(got)] = [j for j, _ in got]
            sim[r, :len(got)] = [v for _, v in got]
    names = np.array(paths, dtype=object)
    table = pa.table({"path": paths, "written_at": when.astype(np.int64),
                      "nbr_paths": [names[row[row >= 0]].tolist() for row in nbr],
                      "nbr_sims": [s[row >= 0].tolist() for row, s in zip(nbr, sim)]})
    table = table.replace_schema_metadata({"k": str(k)})
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache_file) as tmp:
        pq.write_table(table, tmp)
    return nbr, sim, len(queried)


def _hashes(out: Path, in_dir, paths: list[str]) -> tuple[list[str | None], list[int | None], int]:
    """(sha256 or None, size or None) per path, from the cache where size and mtime are unchanged; files hashed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cache_file = out / DEDUP_DIR / "hashes.parquet"
    cache = {}
    if cache_file.is_file():
        c = pq.read_table(cache_file).to_pylist()
        cache = {(r["path"], r["size"], r["mtime_ns"]): r["sha256"] for r in c}
    # an S3 IN_DIR is listed once (page by page) rather than asked for each object's size in its own request
    listed = {e.rel: e for e in storage.iter_files(in_dir)} if storage.is_remote(in_dir) else None
    digests, sizes, rows, hashed = [], [], [], 0
    for p in paths:
        st = (listed.get(p) if listed is not None else storage.stat(in_dir / p)) if in_dir is not None else None
        if st is None:
            digests.append(None)
            sizes.append(None)
            continue
        key = (p, st.size, st.mtime_ns)
        d = cache.get(key)
        if d is None:
            if listed is not None:
                h = hashlib.sha256(storage.read_bytes(st.path))
            else:
                h = hashlib.sha256()
                with open(st.path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            d, hashed = h.hexdigest(), hashed + 1
        digests.append(d)
        sizes.append(st.size)
        rows.append({"path": p, "size": st.size, "mtime_ns": st.mtime_ns, "sha256": d})
    table = pa.Table.from_pylist(rows, schema=pa.schema([("path", pa.string()), ("size", pa.int64()),
                                                         ("mtime_ns", pa.int64()), ("sha256", pa.string())]))
    with atomic_path(cache_file) as tmp:
        pq.write_table(table, tmp)
    return digests, sizes, hashed


def components(n: int, pairs_a: np.ndarray, pairs_b: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes joined by the undirected pairs (a[i], b[i])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(pairs_a), np.int8), (pairs_a, pairs_b)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def find_groups(out_dir, threshold: float | None = None, k: int = DEFAULT_K, in_dir=None,
                progress: bool = True, page: bool = True, store=None) -> dict:
    """Group OUT_DIR's embedded images into near and exact duplicates; writes OUT_DIR/dedup/ and returns the summary."""
    if int(k) < 1:
        raise EmbeddingsError(f"k must be >= 1, not {k}")
    job = _job_summary(out_dir, store)
    if in_dir is None:
        in_dir = job.get("in_dir")
    in_dir = None if in_dir is None else (str(in_dir) if storage.is_remote(str(in_dir)) else Path(in_dir))
    # an s3:// OUT_DIR: built in a local mirror, its dedup/ (groups, page, caches) uploaded back
    with storage.mirrored(out_dir, pull=(EMBEDDINGS_DIR, INDEX_DIR, DEDUP_DIR), push=(DEDUP_DIR,)) as out:
        summary = _find_groups(out, job, threshold, int(k), in_dir, progress, page)
    if storage.is_remote(out_dir) and "page" in summary:  # the uploaded page, and the mirror's copy to open
        summary["page_local"] = summary["page"]
        summary["page"] = str(storage.join(storage.normalize(out_dir), DEDUP_DIR, "index.html"))
    return summary


def _find_groups(out: Path, job: dict, threshold, k: int, in_dir, progress: bool, page: bool) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if threshold is None:
        threshold = float(job.get("dedup_threshold") or DEFAULT_THRESHOLD)
    if not -1.0 <= float(threshold) <= 1.0:
        raise EmbeddingsError(f"threshold is a cosine similarity in [-1, 1], not {threshold}")
    paths, x, when, ws, hs = _latest_rows(out)
    nbr, sim, queried = _neighbours(out, paths, x, when, int(k), progress)
    digests, sizes, hashed = _hashes(out, in_dir, paths)
    rows_, cols_ = np.nonzero((sim >= threshold) & (nbr >= 0))
    a, b = rows_, nbr[rows_, cols_]
    by_hash: dict[str, int] = {}
    ea, eb = [], []
    for i, d in enumerate(digests):
        if d is not None:
            j = by_hash.setdefault(d, i)
            if j != i:
                ea.append(j)
                eb.append(i)
    label = components(len(paths), np.concatenate([a, np.array(ea, np.int64)]),
                       np.concatenate([b, np.array(eb, np.int64)]))
    counts = np.bincount(label)
    members = np.flatnonzero(counts[label] > 1)
    members = members[np.lexsort((np.array(paths, dtype=object)[members], label[members]))]
    out_rows, freed = [], 0
    order = {}  # component label -> group id: largest groups first
    for g, lab in enumerate(sorted(np.unique(label[members]), key=lambda lab: (-counts[lab], lab))):
        order[lab] = g
    for lab in order:
        idx = members[label[members] == lab]
        # the representative: the most pixels (the original a copy was made from), then the biggest file
        rep = max(idx, key=lambda i: (int(ws[i]) * int(hs[i]), sizes[i] or 0, -i))
        for i in idx:
            exact = i != rep and digests[i] is not None and digests[i] == digests[rep]
            out_rows.append({"group": order[lab], "path": paths[i], "representative": bool(i == rep),
                             "similarity": float(x[i] @ x[rep]), "match": "exact" if exact else (
                                 "representative" if i == rep else "near"),
                             "bytes": sizes[i], "width": int(ws[i]), "height": int(hs[i])})
            if i != rep:
                freed += sizes[i] or 0
    out_rows.sort(key=lambda r: (r["group"], not r["representative"], -r["similarity"], r["path"]))
    d = out / DEDUP_DIR
    d.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("group", pa.int64()), ("path", pa.string()), ("representative", pa.bool_()),
                        ("similarity", pa.float32()), ("match", pa.string()), ("bytes", pa.int64()),
                        ("width", pa.int32()), ("height", pa.int32())])
    table = pa.Table.from_pylist(out_rows, schema=schema)
    with atomic_path(d / "groups.parquet") as tmp:
        pq.write_table(table, tmp)
    with atomic_path(d / "groups.csv") as tmp:
        pcsv.write_csv(table, tmp)
    summary = {"images": len(paths), "groups": len(order), "images_in_groups": len(out_rows),
               "exact_duplicates": sum(r["match"] == "exact" for r in out_rows),
               "bytes_freeable": int(freed), "threshold": float(threshold), "k": int(k),
               "queried": int(queried), "hashed": int(hashed), "in_dir": str(in_dir) if in_dir else None,
               "model": job.get("model")}
    if page:
        from pipeline.dedup_page import write_page

        summary["page"] = str(write_page(d / "index.html", out_rows, in_dir, summary))
    write_text(d / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _job_summary(out_dir, store=None) -> dict:
    """The embed job's summary.json (input folder, model), plus the model card's dedup threshold if it has one."""
    from pipeline.manifest import read_summary

    job = read_summary(out_dir)
    model = job.get("model") or {}
    info = {"in_dir": job.get("in_dir"), "model": f"{model.get('name')}:{model.get('version')}" if model else None}
    if model.get("name"):
        try:
            from aeflow.store import ModelStore

            ref = ModelStore(store).resolve(f"{model['name']}:{model['version']}")
            info["dedup_threshold"] = ref.card.get("dedup", {}).get("threshold")
        except Exception:  # noqa: BLE001 - a model not in this store: the default threshold
            pass
    return info
