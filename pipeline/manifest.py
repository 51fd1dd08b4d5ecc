"""The run record: OUT_DIR/_aeflow/manifest/<run>.jsonl (append-only, one file per run), summary.json, a lock.

A row is appended only after its output (image file or embeddings part) is durable, and the file is flushed
after every batch, so a killed driver loses at most the rows of batches in flight, which a rerun redoes.
The state of an input is its latest row across all manifest files (files sort by run start time).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path

from aeflow.files import write_json

META_DIR = "_aeflow"
MANIFEST_DIR = f"{META_DIR}/manifest"
SUMMARY = f"{META_DIR}/summary.json"
LOCK = f"{META_DIR}/lock"
DONE = ("ok", "skipped")

# Every manifest row has these keys (None where not applicable).
ROW_FIELDS = ("path", "status", "error", "output", "in_w", "in_h", "out_w", "out_h", "in_bytes", "out_bytes",
              "mtime_ns", "job", "model", "model_version", "model_sha256", "seconds", "node", "part", "run")


def new_run_id() -> str:
    """A run id that sorts by start time."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


def make_row(**fields) -> dict:
    """A manifest row with every field present; unknown field names are an error."""
    unknown = set(fields) - set(ROW_FIELDS)
    if unknown:
        raise KeyError(f"unknown manifest fields: {sorted(unknown)}")
    return {k: fields.get(k) for k in ROW_FIELDS}


def iter_rows(out_dir: Path):
    """All rows of all manifest files, oldest run first; a torn last line (killed writer) is ignored."""
    d = Path(out_dir) / MANIFEST_DIR
    if not d.is_dir():
        return
    for f in sorted(d.glob("*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "path" in row:
                    yield row


def load_state(out_dir: Path) -> dict[str, dict]:
    """Latest row per input path across all runs."""
    state: dict[str, dict] = {}
    for row in iter_rows(out_dir):
        state[row["path"]] = row
    return state


class ManifestWriter:
    """Appends rows of one run to its own JSONL file; flush() after each batch."""

    def __init__(self, out_dir: Path, run_id: str):
        d = Path(out_dir) / MANIFEST_DIR
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / f"{run_id}.jsonl"
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        """Append rows and flush them to the OS (they survive the driver being killed)."""
        for r in rows:
            self._f.write(json.dumps(r, separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def write_summary(out_dir: Path, summary: dict) -> Path:
    """Write OUT_DIR/_aeflow/summary.json atomically."""
    path = Path(out_dir) / SUMMARY
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, summary)


class RunLock:
    """An exclusive lock on OUT_DIR for one driver (two runs appending to one OUT_DIR would race)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        from pipeline.predictor import JobConfigError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JobConfigError(f"{self.path.parent.parent} is in use by another aeflow job "
                                 f"(lock {self.path})") from None
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
