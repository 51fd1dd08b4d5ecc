"""`aeflow api` end to end on Ray Serve: same answers as the batch jobs, bad inputs, alias moves, concurrent load."""
from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_photo
from tests.serving.helpers import TILE, pipeline_models

# Ray Serve's own pydantic models warn on import; nothing to act on here
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")

FILES = ["a.jpg", "b.png", "c.webp", "sub/grey.png", "sub/rgba.png", "sub/palette.gif"]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _batch_job(api, job: str, model: str, name: str):
    from pipeline.runner import JobConfig, run_job

    out = api.work / name
    s = run_job(JobConfig(job=job, in_dir=api.inputs, out_dir=out, model=model, store=api.store, device="cpu",
                          runner="local", tile=TILE, progress=False))
    assert s["counts"]["failed"] == 0
    return out


@pytest.mark.parametrize("route,job", [("denoise", "denoise"), ("upscale?scale=2", "upscale")])
def test_images_bit_identical_to_batch_job(api, route, job):
    replies = {f: api.post("/" + route, (api.inputs / f).read_bytes()) for f in FILES}
    for f, r in replies.items():
        assert r.status == 200, (f, r.body)
    models = {r.model for r in replies.values()}
    assert len(models) == 1  # one version answered all of them; the batch job runs that same version
    out = _batch_job(api, job, models.pop(), f"batch-{job}")
    for f, r in replies.items():
        assert r.body == (out / f).read_bytes(), f
        media = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif"}
        assert r.headers["content-type"] == media[f[f.rindex("."):]]


def test_upscale_doubles_the_size(api):
    r = api.post("/upscale", _png(make_photo(20, 28, 9)))
    assert r.status == 200 and r.model == "upscale-x2:1"
    assert Image.open(io.BytesIO(r.body)).size == (56, 40)


def test_accept_header_chooses_the_output_format(api):
    r = api.post("/denoise", _png(make_photo(20, 28, 9)), headers={"Accept": "image/webp, */*;q=0.1"})
    assert r.status == 200 and r.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(r.body)).format == "WEBP"


def test_embed_matches_batch_vectors(api):
    from pipeline.embeddings import read_embeddings, vectors_of

    t = read_embeddings(api.embed_out, columns=["path", "vector", "model"])
    batch = dict(zip(t.column("path").to_pylist(), vectors_of(t)))
    assert set(batch) == set(FILES)
    for f in FILES:
        r = api.post("/embed", (api.inputs / f).read_bytes())
        assert r.status == 200 and r.model == "ae:1" == t.column("model")[0].as_py()
        np.testing.assert_allclose(np.array(r.json()["vector"], np.float32), batch[f], rtol=1e-5, atol=1e-6)


def test_embed_binary_formats(api):
    data = (api.inputs / "a.jpg").read_bytes()
    ref = np.array(api.post("/embed", data).json()["vector"], np.float32)
    npy = api.post("/embed?format=npy", data)
    assert npy.status == 200 and np.array_equal(np.load(io.BytesIO(npy.body)), ref)
    raw = api.post("/embed", data, headers={"Accept": "application/octet-stream"})
    assert raw.status == 200 and raw.headers["x-aeflow-dim"] == str(ref.size)
    assert np.array_equal(np.frombuffer(raw.body, "<f4"), ref)


def test_search_matches_batch_search(api):
    from pipeline.search import search

    for f in ("a.jpg", "sub/rgba.png"):
        r = api.post("/search?k=3", (api.inputs / f).read_bytes())
        assert r.status == 200 and r.model == "ae:1"
        got = r.json()["results"]
        want = search(api.embed_out, image=api.inputs / f, k=3, store=api.store)
        assert [g["path"] for g in got] == [w["path"] for w in want]
        assert got[0]["path"] == f  # the image itself is its own nearest neighbour
        np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)


@pytest.mark.parametrize("case", ["empty", "garbage", "truncated", "json-type", "too-many-bytes", "too-many-pixels"])
def test_bad_input_is_refused_and_service_keeps_answering(api, case):
    good = _png(make_photo(16, 16, 3))
    headers = {}
    if case == "empty":
        body, status = b"", 400
    elif case == "garbage":
        body, status = b"this is not an image at all", 400
    elif case == "truncated":  # a valid header, so only the replica's full decode finds out
        data = (api.inputs / "a.jpg").read_bytes()
        body, status = data[:len(data) // 2], 400
    elif case == "json-type":
        body, status, headers = good, 400, {"Content-Type": "application/json"}
    elif case == "too-many-bytes":  # the test service allows 300 kB
        body, status = np.random.default_rng(0).integers(0, 256, 400_000, dtype=np.uint8).tobytes(), 413
    else:  # 2000x2000 = 4 MP of zeros: a tiny PNG whose header is over the 1 MP limit
        body, status = _png(np.zeros((2000, 2000, 3), np.uint8)), 413
    for route in ("denoise", "embed"):
        r = api.post("/" + route, body, headers=headers)
        assert r.status == status, (route, r.body)
        assert r.json()["error"] and r.model  # a clear message, and the model header on errors too
    assert api.post("/denoise", good).status == 200
    assert api.get("/health").json()["status"] == "ok"


def test_routing_errors(api):
    good = _png(make_photo(16, 16, 3))
    assert api.get("/nope").status == 404
    assert api.get("/denoise").status == 405
    assert api.post("/upscale?scale=3", good).status == 400
    assert api.post("/search?k=0", good).status == 400
    assert api.post("/embed?format=xml", good).status == 400


def _wait_for_model(api, want: str, timeout: float = 60.0):
    data = _png(make_photo(16, 16, 4))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api.post("/denoise", data)
        if r.model == want:
            return r
        time.sleep(0.3)
    raise AssertionError(f"the service still answers with {r.model}, not {want}")


def test_alias_move_switches_the_answering_version(api):
    from aeflow.store import ModelStore

    store = ModelStore(api.store)
    build = api.work / "v2-build"
    v2 = pipeline_models().register(api.store, "denoise", pipeline_models().dncnn(build / "m.onnx"), "denoise")
    try:
        store.set_alias("denoise", "production", v2.version)
        r = _wait_for_model(api, f"denoise:{v2.version}")
        assert r.status == 200
        m = api.get("/models")
        assert m.json()["denoise"][0]["model"] == f"denoise:{v2.version}" and m.model
    finally:
        store.set_alias("denoise", "production", 1)
    assert _wait_for_model(api, "denoise:1").status == 200


def test_concurrent_load_and_metrics(api):
    images = [_png(make_photo(24, 24, s)) for s in range(4)]

    def client(i: int) -> list[int]:
        route = "/denoise" if i % 2 else "/embed"
        return [api.post(route, images[(i + j) % 4]).status for j in range(10)]

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for ss in pool.map(client, range(8)) for s in ss]
    assert statuses == [200] * 80
    text = api.get("/metrics").body.decode()
    assert 'aeflow_requests_total{endpoint="denoise",code="200"}' in text
    assert 'aeflow_batch_size_count{endpoint="embed"}' in text
    assert 'aeflow_request_seconds_bucket{endpoint="denoise",le="+Inf"}' in text
    # 8 clients on one replica: at least some requests shared a model call
    sums = [ln for ln in text.splitlines() if ln.startswith("aeflow_batch_size_bucket") and 'le="1"' in ln]
    counts = [ln for ln in text.splitlines() if ln.startswith("aeflow_batch_size_count")]
    assert sum(int(x.rsplit(" ", 1)[1]) for x in sums) < sum(int(x.rsplit(" ", 1)[1]) for x in counts)
