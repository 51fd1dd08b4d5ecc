"""One storage layer for local paths and `s3://` URLs: list page by page, read, publish whole, delete, retried.

Every path the batch jobs, the manifest, the embeddings parts and the index touch goes through these functions,
so nothing above knows which kind a folder is. Local paths keep the atomic-rename rules of aeflow.files;
an S3 object is always uploaded in one PutObject request (never a multipart upload, so an interrupted run can
leave no partial object: a PUT is all or nothing). Transient S3 errors (throttling, 5xx, dropped or refused
connections) are retried here with exponential backoff and counted (`retries()`); botocore's own retries are
off so that every retry is seen and counted once. Credentials and region come from boto3's standard chain (AWS
environment variables, ~/.aws files, instance roles); the endpoint of an S3-compatible store from
`configure(endpoint)` (the CLI's --s3-endpoint), else $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL.
"""
from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aeflow.errors import UsageError
from aeflow.files import write_bytes as _write_local

SCHEME = "s3://"
LIST_PAGE = 1000  # keys per listing request (S3's maximum): a listing holds one page at a time
MAX_ATTEMPTS = 10  # per request; with the backoff below a request keeps trying for about a minute
BACKOFF_S = 0.2
BACKOFF_CAP_S = 10.0
# S3 error codes that mean "try again", beside every 5xx status and every connection-level error
RETRY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
               "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests"}
DENIED_CODES = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
MISSING_BUCKET_CODES = {"NoSuchBucket", "404"}

_state = threading.local()
_config = {"endpoint": None}
_retries = [0]
_retries_lock = threading.Lock()


class StorageAccessError(UsageError):
    """A bucket that does not exist, or access that is denied: fixable by the user (exit 2, before any work)."""


class StorageError(OSError):
    """An S3 request that failed for good (after its retries, or a non-transient error)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Entry:
    """One listed file: its full path or URL, its path relative to the listed folder, size and version."""

    path: str
    rel: str
    size: int
    mtime_ns: int
    etag: str | None = None  # S3: the object's ETag (a new upload of the same key gets a new one)


def is_remote(path) -> bool:
    """True for an s3:// URL."""
    return isinstance(path, str) and path.startswith(SCHEME)


def normalize(path) -> str | Path:
    """A URL as 's3://bucket/prefix' (no trailing slash), a local path expanded and resolved."""
    if isinstance(path, str) and path.startswith(SCHEME):
        bucket, key = split(path)
        return f"{SCHEME}{bucket}/{key}".rstrip("/") if key else f"{SCHEME}{bucket}"
    return Path(path).expanduser().resolve()


def split(url: str) -> tuple[str, str]:
    """('bucket', 'key/prefix') of an s3:// URL; an empty or odd bucket name is a usage error."""
    rest = url[len(SCHEME):]
    bucket, _, key = rest.partition("/")
    if not bucket or "@" in bucket or ":" in bucket:
        raise UsageError(f"not an S3 URL of the form s3://BUCKET/PREFIX: {url!r}")
    return bucket, key.strip("/")


def join(base, *rels: str) -> str | Path:
    """base/rel/...: a URL stays a string, a local path a Path."""
    if is_remote(base):
        out = str(base).rstrip("/")
        for r in rels:
            out = f"{out}/{r.strip('/')}" if r else out
        return out
    return Path(base).joinpath(*rels)


def configure(endpoint: str | None) -> None:
    """Use this S3 endpoint in this process (workers get the driver's); None: the AWS variables decide."""
    if endpoint != _config["endpoint"]:
        _config["endpoint"] = endpoint or None
        _state.__dict__.clear()


def endpoint() -> str | None:
    """The S3 endpoint URL in use (configured, else $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL), or None."""
    return _config["endpoint"] or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def retries() -> int:
    """S3 requests retried so far in this process."""
    return _retries[0]


def _client():
    c = getattr(_state, "client", None)
    if c is None:
        import logging

        import boto3
        from botocore.config import Config

        # botocore's debug log prints signed request headers (the access key id among them): never in our logs
        for name in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(name).setLevel(logging.WARNING)

        url = endpoint()
        cfg = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60,
                     max_pool_connections=32,
                     # S3-compatible stores (MinIO, Ceph, moto) want path-style addressing
                     s3={"addressing_style": "path"} if url else None)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        session = boto3.session.Session()
        c = session.client("s3", endpoint_url=url, config=cfg,
                           region_name=region or session.region_name or "us-east-1")
        _state.client = c
    return c


def _code(exc) -> tuple[str | None, int | None]:
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error") or {}
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return (str(err["Code"]) if "Code" in err else None), status


def _transient(exc) -> bool:
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        code, status = _code(exc)
        return code in RETRY_CODES or (status is not None and status >= 500)
    return isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError))


def _call(op: str, **kw):
    """client.op(**kw), retried with backoff on transient errors; a final failure is a StorageError."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    for attempt in range(MAX_ATTEMPTS):
        try:
            return getattr(_client(), op)(**kw)
        except NoCredentialsError:
            raise StorageAccessError("no AWS credentials on this machine (or Ray node): set AWS_ACCESS_KEY_ID and "
                                     "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials or an instance role") from None
        except (ClientError, BotoCoreError, ConnectionError, TimeoutError) as exc:
            if not _transient(exc) or attempt == MAX_ATTEMPTS - 1:
                code, status = _code(exc)
                where = f"s3://{kw.get('Bucket', '?')}/{kw.get('Key') or kw.get('Prefix') or ''}"
                raise StorageError(f"S3 {op} {where}: {code or type(exc).__name__}"
                                   f"{f' (HTTP {status})' if status else ''}", code or str(status)) from None
            with _retries_lock:
                _retries[0] += 1
            time.sleep(min(BACKOFF_CAP_S, BACKOFF_S * 2 ** attempt) * (0.5 + random.random() / 2))


def _ns(dt) -> int:
    return int(dt.timestamp() * 1e9)


def iter_files(folder, prefix: str = "") -> Iterator[Entry]:
    """Every file under folder (or under folder/prefix), streamed (S3: one page of 1000 keys at a time).

    Local folders: hidden files and temporary names are listed too; callers filter by name.
    """
    if is_remote(folder):
        bucket, key = split(str(folder))
        base = f"{key}/" if key else ""
        start = base + prefix.strip("/") + ("/" if prefix else "")
        token = None
        while True:
            kw = dict(Bucket=bucket, Prefix=start, MaxKeys=LIST_PAGE)
            if token:
                kw["ContinuationToken"] = token
            page = _call("list_objects_v2", **kw)
            for o in page.get("Contents", ()):
                if o["Key"].endswith("/"):
                    continue  # a "folder" marker some tools create
                yield Entry(f"{SCHEME}{bucket}/{o['Key']}", o["Key"][len(base):], int(o["Size"]),
                            _ns(o["LastModified"]), o.get("ETag", "").strip('"') or None)
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]
    root = Path(folder)
    top = root / prefix if prefix else root
    if not top.is_dir():
        return
    for dirpath, _, names in os.walk(top):
        for n in sorted(names):
            p = Path(dirpath) / n
            try:
                st = p.stat()
            except OSError:
                continue
            yield Entry(str(p), p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns)


def read_bytes(path) -> bytes:
    """The whole file or object."""
    if is_remote(path):
        bucket, key = split(str(path))
        for attempt in range(MAX_ATTEMPTS):
            body = _call("get_object", Bucket=bucket, Key=key)["Body"]
            try:
                return body.read()
            except Exception as exc:  # noqa: BLE001 - a connection dropped mid-body: the GET is redone
                if not _transient(exc) or attempt == MAX_ATTEMPTS - 1:
                    raise StorageError(f"S3 get_object {path}: {type(exc).__name__}") from None
                with _retries_lock:
                    _retries[0] += 1
    return Path(path).read_bytes()


def write_bytes(path, data: bytes) -> None:
    """Publish data whole: S3 in one PUT (readers see the old object or the new one); local atomically."""
    if is_remote(path):
        bucket, key = split(str(path))
        _call("put_object", Bucket=bucket, Key=key, Body=data)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write_local(path, data)


def write_new(path, data: bytes) -> bool:
    """Publish data only if nothing is at path yet; False when something is (S3: a conditional PUT)."""
    if is_remote(path):
        bucket, key = split(str(path))
        try:
            _call("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except StorageError as exc:
            if exc.code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise
        return True
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.new")
    tmp.write_bytes(data)
    try:
        os.link(tmp, p)  # fails if the name exists: never overwrites
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def stat(path) -> Entry | None:
    """The file's Entry, or None when it does not exist."""
    if is_remote(path):
        bucket, key = split(str(path))
        try:
            h = _call("head_object", Bucket=bucket, Key=key)
        except StorageError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return Entry(str(path), key.rsplit("/", 1)[-1], int(h["ContentLength"]), _ns(h["LastModified"]),
                     h.get("ETag", "").strip('"') or None)
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    return Entry(str(p), p.name, st.st_size, st.st_mtime_ns) if p.is_file() else None


def is_file(path) -> bool:
    """True when a file (object) exists at path."""
    return stat(path) is not None


def delete(path) -> None:
    """Remove the file (object); a missing one is fine."""
    if is_remote(path):
        bucket, key = split(str(path))
        _call("delete_object", Bucket=bucket, Key=key)
        return
    Path(path).unlink(missing_ok=True)


def delete_tree(folder) -> None:
    """Remove everything under folder (S3: every key under the prefix, 1000 per request)."""
    if not is_remote(folder):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        return
    bucket, _ = split(str(folder))
    batch: list[dict] = []
    for e in iter_files(folder):
        batch.append({"Key": split(e.path)[1]})
        if len(batch) == 1000:
            _call("delete_objects", Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            batch = []
    if batch:
        _call("delete_objects", Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def check_access(url: str, write: bool) -> None:
    """Raise StorageAccessError (exit 2) unless the bucket exists and can be listed (and, with write, written)."""
    bucket, key = split(url)
    try:
        _call("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
        if write:
            probe = f"{key}/_aeflow/.write-probe" if key else "_aeflow/.write-probe"
            _call("put_object", Bucket=bucket, Key=probe, Body=b"")
            _call("delete_object", Bucket=bucket, Key=probe)
    except StorageError as exc:
        if exc.code in MISSING_BUCKET_CODES:
            raise StorageAccessError(f"S3 bucket {bucket!r} does not exist (at {endpoint() or 'AWS'})") from None
        if exc.code in DENIED_CODES:
            raise StorageAccessError(f"access to {url} is denied ({exc.code}): check the AWS credentials and the "
                                     f"bucket's policy{' (it must allow writes)' if write else ''}") from None
        raise StorageAccessError(f"cannot reach {url}: {exc}") from None


def create_bucket(name: str) -> bool:
    """Create the bucket unless it exists; True when it was created."""
    try:
        _call("head_bucket", Bucket=name)
        return False
    except StorageError as exc:
        if exc.code not in MISSING_BUCKET_CODES:
            raise
    try:
        _call("create_bucket", Bucket=name)
    except StorageError as exc:
        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        return False
    return True


def abort_uploads(url: str) -> int:
    """Abort the unfinished multipart uploads under url (other tools' or a killed process's); how many."""
    bucket, key = split(url)
    n = 0
    kw = dict(Bucket=bucket, Prefix=f"{key}/" if key else "")
    while True:
        page = _call("list_multipart_uploads", **kw)
        for u in page.get("Uploads", ()):
            _call("abort_multipart_upload", Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
            n += 1
        if not page.get("IsTruncated"):
            return n
        kw.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))


def cache_root() -> Path:
    """Where S3 folders are mirrored for the commands that need local files ($AEFLOW_CACHE, else ~/.cache/aeflow)."""
    return Path(os.environ.get("AEFLOW_CACHE") or Path.home() / ".cache" / "aeflow")


_MIRROR_RECORD = ".aeflow-mirror.json"


@contextmanager
def mirrored(folder, pull: tuple[str, ...], push: tuple[str, ...] = ()) -> Iterator[Path]:
    """A local folder holding `folder`'s files under the `pull` prefixes; on success `push` prefixes go back.

    For local folders this is the folder itself. For an S3 URL it is a cache kept between calls
    (cache_root()/s3/BUCKET/PREFIX): only objects whose ETag changed are downloaded again, and only local files
    that changed are uploaded (each in one PUT, *.json last, so a reader never sees an index.json that names
    files not there yet); remote objects under `push` that are gone locally are deleted. Used by `index`,
    `search` and `dedup`, whose libraries (faiss, Parquet caches) want files. An error in the block uploads
    nothing.
    """
    import json

    if not is_remote(folder):
        yield Path(folder)
        return
    bucket, key = split(str(folder))
    local = cache_root() / "s3" / bucket / key
    local.mkdir(parents=True, exist_ok=True)
    rec_file = local / _MIRROR_RECORD
    try:
        record = json.loads(rec_file.read_text())
    except (OSError, ValueError):
        record = {}

    def mark(rel: str, etag: str | None) -> None:
        st = (local / rel).stat()
        record[rel] = {"etag": etag, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def unchanged(rel: str) -> bool:
        r, p = record.get(rel), local / rel
        return r is not None and p.is_file() and p.stat().st_size == r["size"] and p.stat().st_mtime_ns == r["mtime_ns"]

    for prefix in pull:
        seen = set()
        for e in iter_files(folder, prefix):
            seen.add(e.rel)
            if not (unchanged(e.rel) and record[e.rel]["etag"] == e.etag):
                _write_local(_mkparent(local / e.rel), read_bytes(e.path))
                mark(e.rel, e.etag)
        for rel in [r for r in record if r.startswith(prefix.rstrip("/") + "/") and r not in seen]:
            (local / rel).unlink(missing_ok=True)
            record.pop(rel)
    _write_local(rec_file, json.dumps(record).encode())
    yield local
    for prefix in push:
        files = sorted((p for p in (local / prefix).rglob("*") if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: (p.suffix == ".json", str(p)))
        here = set()
        for p in files:
            rel = p.relative_to(local).as_posix()
            here.add(rel)
            if not unchanged(rel):
                write_bytes(f"{SCHEME}{bucket}/{key + '/' if key else ''}{rel}", p.read_bytes())
                mark(rel, None)
        for e in list(iter_files(folder, prefix)):
            if e.rel not in here:
                delete(e.path)
                record.pop(e.rel, None)
            elif e.rel in record:  # the ETag of what was uploaded: the next pull keeps the file
                record[e.rel]["etag"] = e.etag
    _write_local(rec_file, json.dumps(record).encode())


def _mkparent(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    return p
