"""The run record: OUT_DIR/_aeflow/manifest/<run>.jsonl (append-only, one file per run), summary.json, a lock.

A row is appended only after its output (image file or embeddings part) is durable, and the file is flushed
after every batch, so a killed driver loses at most the rows of batches in flight, which a rerun redoes.
The state of an input is its latest row across all manifest files (files sort by run start time).
On S3, where nothing can be appended to, a run's rows go out as numbered objects <run>.<seq>.jsonl, one every
S3_FLUSH_S seconds or S3_FLUSH_ROWS rows (a killed driver loses the rows since the last one: a rerun redoes
them, overwriting their outputs with the same bytes).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

from aeflow import storage
from aeflow.files import json_text

META_DIR = "_aeflow"
MANIFEST_DIR = f"{META_DIR}/manifest"
SUMMARY = f"{META_DIR}/summary.json"
LOCK = f"{META_DIR}/lock"
DONE = ("ok", "skipped")

# Every manifest row has these keys (None where not applicable).
ROW_FIELDS = ("path", "status", "error", "output", "in_w", "in_h", "out_w", "out_h", "in_bytes", "out_bytes",
              "mtime_ns", "job", "model", "model_version", "model_sha256", "seconds", "node", "part", "run", "etag")
S3_FLUSH_S = 1.0
S3_FLUSH_ROWS = 5000
LOCK_STALE_S = 120  # an S3 lock not refreshed for this long belongs to a driver that is gone
LOCK_REFRESH_S = 30
READ_AHEAD = 16


def new_run_id() -> str:
    """A run id that sorts by start time."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


def make_row(**fields) -> dict:
    """A manifest row with every field present; unknown field names are an error."""
    unknown = set(fields) - set(ROW_FIELDS)
    if unknown:
        raise KeyError(f"unknown manifest fields: {sorted(unknown)}")
    return {k: fields.get(k) for k in ROW_FIELDS}


def iter_rows(out_dir):
    """All rows of all manifest files, oldest run first; a torn last line (killed writer) is ignored.

    Local files are read line by line; S3 objects are fetched READ_AHEAD at a time, in order (a long run leaves
    one per second of work).
    """
    names = sorted((e for e in storage.iter_files(out_dir, MANIFEST_DIR) if e.rel.endswith(".jsonl")
                    and not e.rel.rsplit("/", 1)[-1].startswith(".")), key=lambda e: e.rel)
    for lines in _fetch(names):
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "path" in row:
                yield row


def _fetch(entries: list) -> Iterator:
    """Each manifest file's lines, in order."""
    if not entries or not storage.is_remote(entries[0].path):
        for e in entries:
            with open(e.path, encoding="utf-8", errors="replace") as fh:
                yield fh
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(READ_AHEAD) as ex:
        for i in range(0, len(entries), READ_AHEAD):
            for data in ex.map(lambda e: storage.read_bytes(e.path), entries[i:i + READ_AHEAD]):
                yield data.decode("utf-8", "replace").splitlines()


def load_state(out_dir: Path) -> dict[str, dict]:
    """Latest row per input path across all runs."""
    state: dict[str, dict] = {}
    for row in iter_rows(out_dir):
        state[row["path"]] = row
    return state


class ManifestWriter:
    """Appends rows of one run to its own JSONL file; flush() after each batch (S3: numbered objects)."""

    def __init__(self, out_dir, run_id: str):
        self.remote = storage.is_remote(out_dir)
        self.path = storage.join(out_dir, MANIFEST_DIR, f"{run_id}.jsonl")
        # relative to OUT_DIR; on S3 the run's rows are in the numbered objects this names
        self.rel = f"{MANIFEST_DIR}/{run_id}.{'*.' if self.remote else ''}jsonl"
        self._seq, self._held, self._last = 0, [], time.monotonic()
        if not self.remote:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        """Append rows and flush them to the OS (they survive the driver being killed)."""
        lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in rows]
        if not self.remote:
            self._f.write("".join(lines))
            self._f.flush()
            return
        self._held.extend(lines)
        if len(self._held) >= S3_FLUSH_ROWS or time.monotonic() - self._last > S3_FLUSH_S:
            self._put()

    def _put(self) -> None:
        self._last = time.monotonic()
        if self._held:
            self._seq += 1
            storage.write_bytes(f"{self.path[:-len('.jsonl')]}.{self._seq:06d}.jsonl",
                                "".join(self._held).encode("utf-8"))
            self._held = []

    def close(self) -> None:
        """Flush to disk and close."""
        if self.remote:
            self._put()
        elif not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def write_summary(out_dir, summary: dict) -> str | Path:
    """Write OUT_DIR/_aeflow/summary.json atomically (S3: one PUT)."""
    path = storage.join(out_dir, SUMMARY)
    storage.write_bytes(path, json_text(summary).encode("utf-8"))
    return path


def read_summary(out_dir) -> dict:
    """OUT_DIR/_aeflow/summary.json of the last run, or {} when there is none."""
    path = storage.join(out_dir, SUMMARY)
    try:
        return json.loads(storage.read_bytes(path))
    except (FileNotFoundError, storage.StorageError, json.JSONDecodeError):
        return {}


class RunLock:
    """An exclusive lock on OUT_DIR for one driver (two runs appending to one OUT_DIR would race).

    Local: flock, released by the kernel when the driver dies. S3: an object holding the owner (host, pid,
    run) created with a conditional PUT and refreshed every LOCK_REFRESH_S; a driver that is gone leaves a
    lock that the next run takes over (same host and the pid is not running, or not refreshed for
    LOCK_STALE_S).
    """

    def __init__(self, out_dir, run: str = ""):
        self.remote = storage.is_remote(out_dir)
        self.path = storage.join(out_dir, LOCK)
        self.run = run
        self._fd: int | None = None
        self._stop = None

    def __enter__(self) -> "RunLock":
        if self.remote:
            self._take_remote()
            return self
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

    def _owner(self) -> bytes:
        import socket

        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "run": self.run,
                           "time": time.time()}).encode()

    def _take_remote(self) -> None:
        import socket
        import threading

        from pipeline.predictor import JobConfigError

        for _ in range(3):
            if storage.write_new(self.path, self._owner()):
                break
            try:
                held = json.loads(storage.read_bytes(self.path))
            except (OSError, ValueError):
                continue  # released meanwhile, or torn: try again
            gone = (held.get("host") == socket.gethostname() and not _pid_alive(int(held.get("pid", 0)))) \
                or time.time() - float(held.get("time", 0)) > LOCK_STALE_S
            if not gone:
                raise JobConfigError(f"{self.path.rsplit('/_aeflow/', 1)[0]} is in use by another aeflow job "
                                     f"(run {held.get('run')} on {held.get('host')}, lock {self.path})")
            storage.delete(self.path)
        else:
            raise JobConfigError(f"could not take the lock {self.path}")
        self._stop = threading.Event()

        def refresh() -> None:
            while not self._stop.wait(LOCK_REFRESH_S):
                try:
                    storage.write_bytes(self.path, self._owner())
                except OSError:
                    pass  # the next refresh tries again; the job itself reports S3 failures

        threading.Thread(target=refresh, daemon=True, name="aeflow-lock").start()

    def __exit__(self, *exc) -> None:
        if self._stop is not None:
            self._stop.set()
            try:
                storage.delete(self.path)
            except OSError:
                pass  # a lock left behind goes stale, and the next run takes it over
            self._stop = None
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0
