"""Files published whole: written under a temporary name in the target's folder, then renamed over the target."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error it replaces `path`.

    A reader sees the old file or the new one, never a half-written one; a crash or an error leaves only the
    old file (the temporary one is removed). The temporary name is unique (mkstemp: O_EXCL, no symlink
    followed) and hidden, so listings of the folder skip it.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are ordinary files other processes read
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_text(obj) -> str:
    """`obj` as the indented, key-sorted JSON aeflow writes (non-JSON values as their str())."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write `obj` as indented, key-sorted JSON to `path` atomically (non-JSON values as their str())."""
    return write_text(path, json_text(obj))
