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
