"""The reader: stream the input folder, plan what to do per file, read a file's bytes inside the workers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from aeflow import storage
from aeflow.imageio import IMAGE_EXTS, iter_image_entries


@dataclass
class Task:
    """One input file to process (plain data: it travels to Ray actors)."""

    path: str  # absolute input path or s3:// URL
    rel: str  # path relative to IN_DIR, '/'-separated
    out: str | None  # output path relative to OUT_DIR (None for embed)
    size: int
    mtime_ns: int
    etag: str | None = None  # S3 inputs: the object's ETag (its version, beside size and mtime)


def iter_listing(in_dir, exclude=None) -> Iterator[tuple[storage.Entry | None, str, str | None]]:
    """Stream (entry, rel, None) per readable image and (None, rel, why) per image-named entry we cannot read.

    Local folders are walked one folder at a time; an S3 prefix is listed one page of keys at a time. Keys
    under `exclude` (OUT_DIR inside IN_DIR) are left out.
    """
    if storage.is_remote(in_dir):
        skip = f"{exclude}/" if exclude is not None else None
        for e in storage.iter_files(in_dir):
            if skip is not None and e.path.startswith(skip):
                continue
            name = e.rel.rsplit("/", 1)[-1]
            if name.startswith(".") or not name.lower().endswith(tuple(IMAGE_EXTS)):
                continue
            yield e, e.rel, None
        return
    in_dir = Path(in_dir)
    for p, problem in iter_image_entries(in_dir):
        if exclude is not None and (p == exclude or exclude in p.parents):
            continue
        rel = p.relative_to(in_dir).as_posix()
        if problem is None:
            try:
                st = p.stat()
            except OSError as exc:  # vanished since it was listed
                problem = f"cannot stat: {exc.strerror or exc}"
        if problem is None:
            yield storage.Entry(str(p), rel, st.st_size, st.st_mtime_ns), rel, None
        else:
            yield None, rel, problem


def read_bytes(path: str) -> bytes:
    """A file's or object's bytes; a FIFO or device is refused without blocking (O_NONBLOCK + fstat)."""
    import stat

    from aeflow.imageio import ImageDecodeError

    if storage.is_remote(path):
        try:
            return storage.read_bytes(path)
        except OSError as exc:  # a key deleted since it was listed, or S3 down past the retries
            raise ImageDecodeError(f"cannot read: {exc}") from None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageDecodeError(f"cannot read: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for a FIFO/device since it was listed
            raise ImageDecodeError("cannot read: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


@dataclass
class PlanSettings:
    """What decides, per input, whether it must be (re)done."""

    job: str
    out_format: str  # writer.OUTPUT_FORMATS; ignored for embed
    model_sha256: str
    overwrite: bool = False


def plan(in_dir, out_dir, settings: PlanSettings, state: dict[str, dict],
         exclude=None) -> Iterator[Task | dict]:
    """Stream a Task per input to do, or a finished row (skipped: done before; failed: output collision).

    Done before = latest row ok/skipped, same job, model sha256, output path, input size, mtime and ETag
    (S3), and its output still present. Outputs claimed in this run are remembered so that two inputs mapping to one
    output (a.png + a.jpg with --format png) give the second a failed row, never an overwrite.
    """
    from pipeline.manifest import DONE, make_row
    from pipeline.writer import output_rel

    claimed: dict[str, str] = {}
    parts_exist: dict[str, bool] = {}
    outputs = _Outputs(out_dir)
    for st, rel, problem in iter_listing(in_dir, exclude):
        out = None if settings.job == "embed" else output_rel(rel, settings.out_format)
        if st is None:  # a symlink loop, a FIFO...: a failed row says why (never silently left out)
            yield make_row(status="failed", error=problem, path=rel, output=out, job=settings.job,
                           model_sha256=settings.model_sha256)
            continue
        base = dict(path=rel, output=out, in_bytes=st.size, mtime_ns=st.mtime_ns, etag=st.etag,
                    job=settings.job, model_sha256=settings.model_sha256)
        if out is not None and out in claimed:
            yield make_row(status="failed", error=f"output {out} collides with the output of {claimed[out]}; "
                           "rename one of them or choose another --format", **base)
            continue
        if out is not None:
            claimed[out] = rel
        prev = state.get(rel)
        if not settings.overwrite and prev is not None and prev.get("status") in DONE \
                and prev.get("job") == settings.job and prev.get("model_sha256") == settings.model_sha256 \
                and prev.get("output") == out and prev.get("in_bytes") == st.size \
                and prev.get("mtime_ns") == st.mtime_ns and prev.get("etag") == st.etag:
            if out is not None:
                present = outputs.has(out)
            else:  # embed: the part file holding its vector must still be there
                part = prev.get("part") or ""
                if part not in parts_exist:
                    parts_exist[part] = bool(part) and outputs.has(f"embeddings/{part}")
                present = parts_exist[part]
            if present:
                row = dict(prev)
                row.update(status="skipped", error=None, seconds=0.0, node=None)
                yield row
                continue
        yield Task(path=st.path, rel=rel, out=out, size=st.size, mtime_ns=st.mtime_ns, etag=st.etag)


class _Outputs:
    """Whether an output exists: a stat per file locally; on S3 one listing of OUT_DIR, made on first use.

    (A HEAD request per skipped input would make resuming a million-image S3 job take hours; the listing
    streams in pages and keeps only the key names.)
    """

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self._keys: set[str] | None = None

    def has(self, rel: str) -> bool:
        if not storage.is_remote(self.out_dir):
            return (Path(self.out_dir) / rel).is_file()
        if self._keys is None:
            self._keys = {e.rel for e in storage.iter_files(self.out_dir)}
        return rel in self._keys
