"""Embedding parts on disk: OUT_DIR/embeddings/{prefix}-NNNNN.parquet, written atomically, read back latest-row-wins.

Row rule (the embed job's resume relies on it): parts are append-only and never overwritten; when a path
appears in several rows (a rerun re-embedded it), the row with the latest `written_at` wins, ties broken by
part file name and then row order. `read_embeddings` / `iter_embedding_batches` apply this rule, so a rerun
only has to write new parts: the superseded vectors disappear from every reader without rewriting a file.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from aeflow import storage
from aeflow.errors import UsageError

EMBEDDINGS_DIR = "embeddings"
COLUMNS = ("path", "vector", "width", "height", "model", "written_at")
DTYPES = {"float32": np.float32, "float16": np.float16}
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*(-[A-Za-z0-9_.]+)*$")
_PART_RE = re.compile(r"^(?P<prefix>.+)-(?P<num>\d{5,})\.parquet$")


class EmbeddingsError(UsageError, ValueError):
    """Bad embeddings input or an unusable embeddings folder (fixable by the user: exit code 2 in the CLI)."""


def embeddings_dir(out_dir: str | os.PathLike) -> Path | str:
    """OUT_DIR/embeddings (a URL for an s3:// OUT_DIR)."""
    return storage.join(out_dir if storage.is_remote(out_dir) else Path(out_dir), EMBEDDINGS_DIR)


def list_parts(out_dir: str | os.PathLike) -> list:
    """Published part files (Paths, or URLs on S3), sorted by name; writers' temp files (hidden, .tmp) are not."""
    d = embeddings_dir(out_dir)
    if storage.is_remote(d):
        return sorted(e.path for e in storage.iter_files(d) if "/" not in e.rel and _PART_RE.match(e.rel))
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if not p.name.startswith(".") and _PART_RE.match(p.name) and p.is_file())


def read_part(part, columns: Sequence[str] | None = None):
    """One part as a pyarrow Table (an S3 part is fetched whole: parts are a few MB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if storage.is_remote(part):
        return pq.read_table(pa.BufferReader(storage.read_bytes(part)), columns=columns)
    return pq.read_table(part, columns=columns)


def _schema(dim: int, dtype: str):
    import pyarrow as pa

    value_type = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        ("path", pa.string()),
        ("vector", pa.list_(value_type, dim)),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("model", pa.string()),
        ("written_at", pa.timestamp("us", tz="UTC")),
    ])


class EmbeddingWriter:
    """Buffers embedding rows and publishes them as numbered parquet parts (temp file, then an atomic link)."""

    def __init__(self, out_dir: Path, dim: int, model_id: str, dtype: str = "float32",
                 rows_per_part: int = 4096, prefix: str = "part"):
        if dtype not in DTYPES:
            raise EmbeddingsError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        if int(dim) < 1 or int(rows_per_part) < 1:
            raise EmbeddingsError(f"dim and rows_per_part must be >= 1 (got {dim}, {rows_per_part})")
        if not _PREFIX_RE.match(prefix) or prefix.startswith("."):
            raise EmbeddingsError(f"bad part prefix {prefix!r}: use letters, digits, '_', '.', '-'")
        if not model_id or ":" not in model_id:
            raise EmbeddingsError(f"model_id must be 'name:version', not {model_id!r}")
        self.dir = embeddings_dir(out_dir)
        self.dim, self.model_id, self.dtype = int(dim), model_id, dtype
        self.rows_per_part, self.prefix = int(rows_per_part), prefix
        self.schema = _schema(self.dim, dtype)
        self.written: list[Path] = []  # parts this writer published, in order
        self._paths: list[str] = []
        self._vectors: list[np.ndarray] = []
        self._widths: list[int] = []
        self._heights: list[int] = []
        self._times: list[np.ndarray] = []
        self._closed = False

    def __len__(self) -> int:
        """Rows buffered, not yet published."""
        return len(self._paths)

    def add(self, paths: list[str], vectors: np.ndarray, widths: list[int], heights: list[int]) -> None:
        """Buffer one batch of rows; parts of rows_per_part rows are published as the buffer fills."""
        if self._closed:
            raise EmbeddingsError("EmbeddingWriter is closed")
        v = np.asarray(vectors)
        n = len(paths)
        if v.ndim != 2 or v.shape != (n, self.dim):
            raise EmbeddingsError(f"vectors must have shape ({n}, {self.dim}) for {n} paths, got {v.shape}")
        if len(widths) != n or len(heights) != n:
            raise EmbeddingsError(f"got {n} paths but {len(widths)} widths and {len(heights)} heights")
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            names = [paths[i] for i in np.flatnonzero(bad)[:5]]
            # a NaN vector would poison every distance in the index; refuse it here, loudly
            raise EmbeddingsError(f"{int(bad.sum())} vectors are not finite (NaN/inf), e.g. {names}")
        for p in paths:
            if not isinstance(p, str) or not p or p.startswith("/"):
                raise EmbeddingsError(f"paths must be non-empty and relative to IN_DIR, got {p!r}")
        now = np.datetime64(_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None), "us")
        self._paths.extend(paths)
        self._vectors.append(v.astype(DTYPES[self.dtype], copy=False))
        self._widths.extend(int(w) for w in widths)
        self._heights.extend(int(h) for h in heights)
        self._times.append(np.full(n, now, dtype="datetime64[us]"))
        while len(self._paths) >= self.rows_per_part:
            self._write(self.rows_per_part)

    def flush(self) -> None:
        """Publish every buffered row now (one part, possibly smaller than rows_per_part)."""
        while self._paths:
            self._write(min(len(self._paths), self.rows_per_part))

    def close(self) -> None:
        """Flush and refuse further rows."""
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> "EmbeddingWriter":
        return self

    def __exit__(self, *exc) -> None:
        # rows already computed are valid even if the job failed later: publish them for resume
        self.close()

    def _write(self, n: int) -> None:
        import pyarrow as pa

        vecs = np.concatenate(self._vectors) if len(self._vectors) > 1 else self._vectors[0]
        times = np.concatenate(self._times) if len(self._times) > 1 else self._times[0]
        # columns from numpy buffers: pa.array() imports pandas on first use (0.35 s, a third of a small job)
        values = _numpy_array(self.schema.field("vector").type.value_type, np.ascontiguousarray(vecs[:n]).reshape(-1))
        table = pa.Table.from_arrays([
            _string_array(self._paths[:n]),
            pa.FixedSizeListArray.from_arrays(values, self.dim),
            _numpy_array(pa.int32(), np.asarray(self._widths[:n], np.int32)),
            _numpy_array(pa.int32(), np.asarray(self._heights[:n], np.int32)),
            _string_array([self.model_id] * n),
            _numpy_array(pa.timestamp("us", tz="UTC"), times[:n].astype("datetime64[us]").view(np.int64)),
        ], schema=self.schema)
        if storage.is_remote(self.dir):
            self.written.append(_publish_remote(table, self.dir, self.prefix))
        else:
            self._write_local(table)
        # drop the published rows only once the part is visible (a failed write keeps them buffered)
        self._paths, self._widths, self._heights = self._paths[n:], self._widths[n:], self._heights[n:]
        self._vectors = [vecs[n:]] if len(vecs) > n else []
        self._times = [times[n:]] if len(times) > n else []

    def _write_local(self, table) -> None:
        import pyarrow.parquet as pq

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{self.prefix}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            self.written.append(_publish(tmp, self.dir, self.prefix))
        finally:
            tmp.unlink(missing_ok=True)


def _numpy_array(type_, a: np.ndarray):
    """A pyarrow array (no nulls) over a contiguous numpy buffer of the matching width."""
    import pyarrow as pa

    a = np.ascontiguousarray(a)
    return pa.Array.from_buffers(type_, len(a), [None, pa.py_buffer(a)])


def _string_array(items: list[str]):
    """A pyarrow utf8 array built from offsets + bytes (see _numpy_array for why not pa.array)."""
    import pyarrow as pa

    data = [s.encode("utf-8") for s in items]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


def _publish(tmp: Path, folder: Path, prefix: str) -> Path:
    """Give tmp the next free part name. os.link fails if the name exists, so no part is ever overwritten."""
    nums = [int(m["num"]) for p in folder.iterdir() if (m := _PART_RE.match(p.name)) and m["prefix"] == prefix]
    num = max(nums, default=0) + 1
    while True:
        final = folder / f"{prefix}-{num:05d}.parquet"
        try:
            os.link(tmp, final)
            return final
        except FileExistsError:  # another writer with the same prefix took this number
            num += 1


def _publish_remote(table, folder: str, prefix: str) -> str:
    """Upload the part under the next free number: a conditional PUT, so no part is ever overwritten."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    nums = [int(m["num"]) for e in storage.iter_files(folder) if (m := _PART_RE.match(e.rel)) and m["prefix"] == prefix]
    num = max(nums, default=0) + 1
    while not storage.write_new(final := f"{folder}/{prefix}-{num:05d}.parquet", data):
        num += 1  # another writer with the same prefix took this number
    return final


def _vectors_to_numpy(col) -> np.ndarray:
    """A (chunked) fixed_size_list column as a float32 (n, dim) array."""
    import pyarrow as pa

    dim = col.type.list_size
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim) for c in chunks if len(c)]
    if not parts:
        return np.zeros((0, dim), np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def vectors_of(table) -> np.ndarray:
    """The `vector` column of an embeddings table as float32 (n, dim)."""
    return _vectors_to_numpy(table.column("vector"))


def _winners(parts: Sequence[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each part, (mask of its rows that win the latest-row rule among `parts`, its paths)."""

    keys, times, owner = [], [], []
    for i, p in enumerate(parts):
        t = read_part(p, columns=["path", "written_at"])
        keys.append(np.asarray(t.column("path").to_pylist(), dtype=object))
        times.append(t.column("written_at").to_numpy().astype("datetime64[us]").astype(np.int64))
        owner.append(np.full(t.num_rows, i, np.int64))
    if not keys:
        return []
    path = np.concatenate(keys)
    wt, part = np.concatenate(times), np.concatenate(owner)
    row = np.concatenate([np.arange(len(k)) for k in keys])
    # order rows oldest -> newest; the last occurrence of each path wins
    order = np.lexsort((row, part, wt))
    rev = order[::-1]
    _, first = np.unique(path[rev], return_index=True)
    win = np.zeros(len(path), bool)
    win[rev[first]] = True
    bounds = np.cumsum([0] + [len(k) for k in keys])
    return [(win[bounds[i]:bounds[i + 1]], keys[i]) for i in range(len(parts))]


def iter_latest_parts(parts: Sequence[Path], columns: Sequence[str] | None = None,
                      paths: Sequence[str] | None = None) -> Iterator[tuple[Path, "object"]]:
    """Yield (part, pyarrow Table of its rows that win the latest-row rule among `parts`), skipping empty ones.

    `paths` keeps only those paths, and parts holding none of them are not read at all.
    """

    cols = _check_columns(columns)
    wanted = None if paths is None else set(paths)
    for p, (mask, keys) in zip(parts, _winners(parts)):
        if wanted is not None:
            mask = mask & np.fromiter((k in wanted for k in keys), bool, len(keys))
        if mask.any():
            yield p, read_part(p, columns=cols).filter(mask)


def iter_embedding_batches(out_dir: str | os.PathLike, batch_rows: int = 65536, columns: Sequence[str] | None = None,
                           parts: Sequence[Path] | None = None, paths: Sequence[str] | None = None) -> Iterator:
    """Yield pyarrow Tables of deduplicated rows (latest row per path wins), part by part, at most batch_rows each.

    `parts` restricts reading (and the dedup rule) to those part files (default: all published parts);
    `paths` keeps only those paths.
    """
    parts = list_parts(out_dir) if parts is None else list(parts)
    for _, t in iter_latest_parts(parts, columns, paths):
        for off in range(0, t.num_rows, batch_rows):
            yield t.slice(off, batch_rows)


def _check_columns(columns: Sequence[str] | None) -> list[str]:
    cols = list(columns) if columns is not None else list(COLUMNS)
    unknown = set(cols) - set(COLUMNS)
    if unknown:
        raise EmbeddingsError(f"unknown embeddings columns {sorted(unknown)}; known: {list(COLUMNS)}")
    return cols


def read_embeddings(out_dir: str | os.PathLike, columns: Sequence[str] | None = None,
                    paths: Sequence[str] | None = None):
    """All parts as one pyarrow Table, one row per path: the most recently written row wins (see module doc).

    `paths` keeps only those paths (e.g. a search query). Rows come in part-name order.
    """
    import pyarrow as pa

    cols = _check_columns(columns)
    tables = list(iter_embedding_batches(out_dir, batch_rows=1 << 62, columns=cols, paths=paths))
    if tables:
        return concat_embeddings(tables)
    parts = list_parts(out_dir)
    schema = read_part(parts[0]).schema if parts else _schema(1, "float32")
    return pa.schema([schema.field(c) for c in cols]).empty_table()


def concat_embeddings(tables: list):
    """Concatenate embeddings tables; float16 and float32 parts are unified to float32."""
    import pyarrow as pa

    if "vector" not in tables[0].column_names or len({t.schema for t in tables}) == 1:
        return pa.concat_tables(tables)
    dims = sorted({t.schema.field("vector").type.list_size for t in tables})
    if len(dims) > 1:
        raise EmbeddingsError(f"embedding parts hold vectors of different sizes {dims}: they come from different "
                              "models; re-embed everything with one model or move the old parts away")
    target = pa.list_(pa.float32(), dims[0])
    out = []
    for t in tables:
        i = t.schema.get_field_index("vector")
        out.append(t.set_column(i, pa.field("vector", target), t.column("vector").cast(target)))
    return pa.concat_tables(out)
