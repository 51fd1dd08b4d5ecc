"""aeflow.storage against a real S3 server (moto) and on local folders: listing, publishing, retries, errors."""
from __future__ import annotations

import threading
import time
import types

import pytest

from aeflow import storage


def test_local_and_remote_paths_join_and_normalize(tmp_path):
    assert storage.join("s3://b/a/", "x/y.png") == "s3://b/a/x/y.png"
    assert storage.normalize("s3://b/photos/2026/") == "s3://b/photos/2026"
    assert storage.normalize("s3://b") == "s3://b"
    assert storage.join(tmp_path, "x", "y") == tmp_path / "x" / "y"
    assert storage.split("s3://bucket/k/ey/") == ("bucket", "k/ey")
    with pytest.raises(storage.UsageError):
        storage.split("s3:///nobucket")


def test_local_folder_round_trip(tmp_path):
    storage.write_bytes(tmp_path / "a" / "b.bin", b"12")
    assert storage.read_bytes(tmp_path / "a" / "b.bin") == b"12"
    assert storage.write_new(tmp_path / "a" / "b.bin", b"x") is False
    assert [e.rel for e in storage.iter_files(tmp_path)] == ["a/b.bin"]
    storage.delete_tree(tmp_path / "a")
    assert not (tmp_path / "a").exists() and storage.stat(tmp_path / "a" / "b.bin") is None


def test_objects_publish_whole_and_never_overwrite_with_write_new(s3):
    url = f"s3://{s3.out}/p/a.bin"
    storage.write_bytes(url, b"first")
    assert storage.write_new(url, b"second") is False
    assert storage.write_new(f"s3://{s3.out}/p/b.bin", b"b") is True
    assert storage.read_bytes(url) == b"first"
    e = storage.stat(url)
    assert e.size == 5 and e.etag and storage.stat(f"s3://{s3.out}/p/none") is None
    storage.delete_tree(f"s3://{s3.out}/p")
    assert s3.keys(f"s3://{s3.out}") == {}


def test_listing_streams_page_by_page(s3, monkeypatch):
    for i in range(7):
        s3.client.put_object(Bucket=s3.inp, Key=f"d/{i}.png", Body=b"x" * i)
    s3.client.put_object(Bucket=s3.inp, Key="dx/other.png", Body=b"")  # a sibling prefix is not "under d"
    calls = []
    real = storage._call
    monkeypatch.setattr(storage, "LIST_PAGE", 3)
    monkeypatch.setattr(storage, "_call", lambda op, **kw: calls.append(op) or real(op, **kw))
    it = storage.iter_files(f"s3://{s3.inp}/d")
    assert isinstance(it, types.GeneratorType)
    first = next(it)
    assert first.rel == "0.png" and calls.count("list_objects_v2") == 1  # only the first page so far
    rest = list(it)
    assert [e.rel for e in rest] == [f"{i}.png" for i in range(1, 7)] and calls.count("list_objects_v2") == 3
    assert [e.size for e in rest] == list(range(1, 7))


def test_missing_bucket_and_denied_access_are_usage_errors(s3, s3_server):
    with pytest.raises(storage.StorageAccessError, match="does not exist"):
        storage.check_access("s3://no-such-bucket-here/x", write=False)
    storage.check_access(f"s3://{s3.out}/x", write=True)
    assert s3.keys(f"s3://{s3.out}") == {}  # the write probe is removed
    s3_server.deny = True
    with pytest.raises(storage.StorageAccessError, match="denied"):
        storage.check_access(f"s3://{s3.out}/x", write=True)


def test_transient_errors_are_retried_and_counted(s3, s3_server, monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.05)
    storage.write_bytes(f"s3://{s3.out}/warm", b"")  # a pooled connection, which down() cuts
    before = storage.retries()
    s3_server.down()
    threading.Timer(1.0, s3_server.up).start()
    t = time.monotonic()
    storage.write_bytes(f"s3://{s3.out}/k", b"after the restart")
    assert time.monotonic() - t >= 0.5  # it did wait for the server
    assert storage.retries() > before
    assert s3.get(f"s3://{s3.out}/k") == b"after the restart"


def test_a_request_failing_for_good_is_a_storage_error(s3, s3_server, monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.01)
    monkeypatch.setattr(storage, "MAX_ATTEMPTS", 3)
    s3_server.down()
    with pytest.raises(storage.StorageError):
        storage.read_bytes(f"s3://{s3.out}/k")


def test_throttling_and_5xx_are_transient_a_missing_key_is_not():
    from botocore.exceptions import ClientError

    def err(code, status):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert storage._transient(err("SlowDown", 503)) and storage._transient(err("InternalError", 500))
    assert storage._transient(err("Throttling", 400))
    assert not storage._transient(err("NoSuchKey", 404)) and not storage._transient(err("AccessDenied", 403))


def test_unfinished_multipart_uploads_are_aborted(s3):
    s3.client.create_multipart_upload(Bucket=s3.out, Key="o/big.png")
    s3.client.create_multipart_upload(Bucket=s3.out, Key="elsewhere/big.png")
    assert storage.abort_uploads(f"s3://{s3.out}/o") == 1
    left = s3.client.list_multipart_uploads(Bucket=s3.out).get("Uploads", [])
    assert [u["Key"] for u in left] == ["elsewhere/big.png"]


def test_mirror_downloads_only_changes_and_pushes_back(s3, monkeypatch):
    url = f"s3://{s3.out}/emb"
    storage.write_bytes(f"{url}/embeddings/part-00001.parquet", b"one")
    storage.write_bytes(f"{url}/index/index.json", b"{}")
    gets = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda p: gets.append(p) or real(p))
    with storage.mirrored(url, pull=("embeddings", "index"), push=("index",)) as local:
        assert (local / "embeddings" / "part-00001.parquet").read_bytes() == b"one"
        (local / "index" / "v1").mkdir()
        (local / "index" / "v1" / "index.faiss").write_bytes(b"faiss")
        (local / "index" / "index.json").write_text('{"v": 1}')
    assert len(gets) == 2
    assert s3.get(f"{url}/index/v1/index.faiss") == b"faiss" and s3.get(f"{url}/index/index.json") == b'{"v": 1}'
    gets.clear()
    storage.write_bytes(f"{url}/embeddings/part-00002.parquet", b"two")
    with storage.mirrored(url, pull=("embeddings", "index"), push=("index",)) as local:
        (local / "index" / "v1" / "index.faiss").unlink()
    assert gets == [f"{url}/embeddings/part-00002.parquet"]  # the unchanged objects are not fetched again
    assert "index/v1/index.faiss" not in s3.keys(url) and "index/index.json" in s3.keys(url)
    with pytest.raises(RuntimeError), storage.mirrored(url, pull=("index",), push=("index",)) as local:
        (local / "index" / "index.json").write_text("half-done")
        raise RuntimeError("the build failed")
    assert s3.get(f"{url}/index/index.json") == b'{"v": 1}'  # a failed block uploads nothing


def test_no_credentials_is_a_usage_error(s3, monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage._state.__dict__.clear()
    with pytest.raises(storage.StorageAccessError, match="no AWS credentials"):
        storage.check_access(f"s3://{s3.inp}/x", write=False)
