"""Session-wide test harness: quiet, isolated Prefect and Ray settings; one Ray and one Prefect per session."""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Set before anything imports prefect or ray: both read their settings once, at import.
_TMP_HOME = tempfile.mkdtemp(prefix="aeflow-test-home-")
os.environ.setdefault("PREFECT_HOME", str(Path(_TMP_HOME) / "prefect"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("AEFLOW_HOME", None)
# S3: the tests' own credentials for the tests' own server, in every process they start (the session's Ray
# workers included); never a developer's real AWS profile or endpoint
S3_KEY_ID, S3_SECRET = "AKIAAEFLOWTESTKEY01", "aeflow-test-secret-never-written-4f9c"
for _k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
    os.environ.pop(_k, None)
os.environ.update(AWS_ACCESS_KEY_ID=S3_KEY_ID, AWS_SECRET_ACCESS_KEY=S3_SECRET, AWS_DEFAULT_REGION="us-east-1")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session (2 CPUs)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """The session's one Prefect backend: a real `prefect server start` on a free 127.0.0.1 port (SQLite).

    Every test that runs a flow in this process points its client at it (`prefect_api`): mixing it with
    Prefect's temporary server in one process leaves the events client on a stale server, and task runs,
    which Prefect 3 records through events, go missing.
    """
    from flows.server import LocalPrefectServer

    srv = LocalPrefectServer(tmp_path_factory.mktemp("prefect-server")).start(timeout=180)
    yield srv
    srv.stop()


@pytest.fixture
def prefect_api(prefect_server):
    """Point this process's Prefect client at the session server for one test."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


def make_photo(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A smooth synthetic 'photo' (gradients + blobs + edges), uint8 HxWxC; deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        img[..., c] = 80 + 60 * np.sin(xx / (7 + 5 * c + rng.uniform(0, 5))) * np.cos(yy / (9 + 3 * c))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, max(4, min(h, w) / 3))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., :1] if channels == 1 else img


@pytest.fixture
def photo_dir(tmp_path):
    """A small folder of generated photos of mixed sizes, modes and formats, with one corrupt file."""
    from PIL import Image

    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(make_photo(48, 64, 1)).save(d / "a.jpg", quality=92)
    Image.fromarray(make_photo(40, 40, 2)).save(d / "b.png")
    Image.fromarray(make_photo(37, 53, 3)[..., 0]).save(d / "sub" / "grey.png")
    Image.fromarray(make_photo(32, 48, 4)).convert("RGBA").save(d / "sub" / "rgba.png")
    Image.fromarray(make_photo(50, 30, 5)).convert("P").save(d / "sub" / "palette.gif")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return d



@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The session's one S3 server: moto's standalone server (a real HTTP S3 API) behind a stoppable proxy."""
    from tests.s3_server import S3Server

    srv = S3Server(str(tmp_path_factory.mktemp("s3") / "moto.log")).start()
    yield srv
    srv.stop()


class S3Buckets:
    """Fresh buckets on the session's S3 server, and helpers that read and fill them past aeflow's code."""

    def __init__(self, server, name: str):
        import boto3

        self.server, self.endpoint = server, server.endpoint
        self.client = boto3.client("s3", endpoint_url=server.direct, region_name="us-east-1",
                                   aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET)
        self.inp, self.out = f"{name}-in", f"{name}-out"
        for b in (self.inp, self.out):
            self.client.create_bucket(Bucket=b)

    def upload(self, folder: Path, url: str) -> int:
        """Every file under folder, to url/<relative path>; how many."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        n = 0
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                key = "/".join(x for x in (prefix.strip("/"), p.relative_to(folder).as_posix()) if x)
                self.client.put_object(Bucket=bucket, Key=key, Body=p.read_bytes())
                n += 1
        return n

    def keys(self, url: str) -> dict[str, int]:
        """{key relative to url: size} of every object under url."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update({o["Key"][len(prefix):]: o["Size"] for o in page.get("Contents", ())})
        return out

    def get(self, url: str) -> bytes:
        bucket, _, key = url[len("s3://"):].partition("/")
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def env(self) -> dict:
        """A subprocess environment that reaches this server with the test credentials."""
        return {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}


@pytest.fixture
def s3(s3_server, request, monkeypatch):
    """Two fresh buckets (`.inp`, `.out`) on the session's S3 server; this process's AWS settings point at it."""
    import re

    from aeflow import storage

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[-40:].strip("-") + f"-{os.getpid() % 1000}"
    for k, v in (("AWS_ACCESS_KEY_ID", S3_KEY_ID), ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
                 ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", s3_server.endpoint)):
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AEFLOW_CACHE", str(Path(tempfile.mkdtemp(prefix="aeflow-s3-cache-"))))
    storage.configure(None)
    storage._state.__dict__.clear()  # a client made for another endpoint in an earlier test
    yield S3Buckets(s3_server, name)
    s3_server.deny = False
    if s3_server._listener is None:
        s3_server.up()
    storage._state.__dict__.clear()
