"""The reader: stream the input folder, plan what to do per file, read a file's bytes inside the workers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from aeflow.imageio import iter_image_entries


@dataclass
class Task:
    """One input file to process (plain data: it travels to Ray actors)."""

    path: str  # absolute input path
    rel: str  # path relative to IN_DIR, '/'-separated
    out: str | None  # output path relative to OUT_DIR (None for embed)
    size: int
    mtime_ns: int


def iter_listing(in_dir: Path, exclude: Path | None = None) \
        -> Iterator[tuple[Path, os.stat_result | None, str | None]]:
    """Stream (path, stat, None) per readable image and (path, None, why) per image-named entry we cannot read."""
    for p, problem in iter_image_entries(in_dir):
        if exclude is not None and (p == exclude or exclude in p.parents):
            continue
        if problem is None:
            try:
                st = p.stat()
            except OSError as exc:  # vanished since it was listed
                problem = f"cannot stat: {exc.strerror or exc}"
        yield (p, st, None) if problem is None else (p, None, problem)


def read_bytes(path: str) -> bytes:
    """A regular file's bytes; a FIFO or device is refused without blocking (O_NONBLOCK + fstat)."""
    import stat

    from aeflow.imageio import ImageDecodeError

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


def plan(in_dir: Path, out_dir: Path, settings: PlanSettings, state: dict[str, dict],
         exclude: Path | None = None) -> Iterator[Task | dict]:
    """Stream a Task per input to do, or a finished row (skipped: done before; failed: output collision).

    Done before = latest row ok/skipped, same job, model sha256, output path, input size and mtime, and
    its output still present. Outputs claimed in this run are remembered so that two inputs mapping to one
    output (a.png + a.jpg with --format png) give the second a failed row, never an overwrite.
    """
    from pipeline.manifest import DONE, make_row
    from pipeline.writer import output_rel

    claimed: dict[str, str] = {}
    parts_exist: dict[str, bool] = {}
    for p, st, problem in iter_listing(in_dir, exclude):
        rel = p.relative_to(in_dir).as_posix()
        out = None if settings.job == "embed" else output_rel(rel, settings.out_format)
        if st is None:  # a symlink loop, a FIFO...: a failed row says why (never silently left out)
            yield make_row(status="failed", error=problem, path=rel, output=out, job=settings.job,
                           model_sha256=settings.model_sha256)
            continue
        base = dict(path=rel, output=out, in_bytes=st.st_size, mtime_ns=st.st_mtime_ns, job=settings.job,
                    model_sha256=settings.model_sha256)
        if out is not None and out in claimed:
            yield make_row(status="failed", error=f"output {out} collides with the output of {claimed[out]}; "
                           "rename one of them or choose another --format", **base)
            continue
        if out is not None:
            claimed[out] = rel
        prev = state.get(rel)
        if not settings.overwrite and prev is not None and prev.get("status") in DONE \
                and prev.get("job") == settings.job and prev.get("model_sha256") == settings.model_sha256 \
                and prev.get("output") == out and prev.get("in_bytes") == st.st_size \
                and prev.get("mtime_ns") == st.st_mtime_ns:
            if out is not None:
                present = (out_dir / out).is_file()
            else:  # embed: the part file holding its vector must still be there
                part = prev.get("part") or ""
                if part not in parts_exist:
                    parts_exist[part] = bool(part) and (out_dir / "embeddings" / part).is_file()
                present = parts_exist[part]
            if present:
                row = dict(prev)
                row.update(status="skipped", error=None, seconds=0.0, node=None)
                yield row
                continue
        yield Task(path=str(p), rel=rel, out=out, size=st.st_size, mtime_ns=st.st_mtime_ns)
