"""The serving pieces without Ray Serve: model reload on alias moves, shared inference, config checks, metrics, CLI."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from aeflow.cli import UsageError, build_parser
from tests.conftest import make_photo
from tests.serving.helpers import pipeline_models

# Ray Serve's own pydantic models warn on import; nothing to act on here
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")


@pytest.fixture
def store(tmp_path):
    """A fresh tiny-model store of tests/pipeline (denoise, denoise-cnn, upscale-x2, ae) per test."""
    return pipeline_models().build_store(tmp_path / "store")


def test_live_model_follows_the_production_alias(store, tmp_path):
    from aeflow.store import ModelStore
    from pipeline.serving_models import LiveModel

    s = ModelStore(store)
    live = LiveModel("upscale-x2", str(store), "image2image", "cpu", 1, poll_s=0.0)
    assert live.current()[0].id == "upscale-x2:1"
    v2 = pipeline_models().register(store, "upscale-x2", pipeline_models().upscale_x2(tmp_path / "u.onnx"), "upscale")
    assert live.current()[0].id == "upscale-x2:2"  # no production alias: a plain name follows latest
    s.set_alias("upscale-x2", "production", 1)
    ref, pred = live.current()
    assert ref.id == "upscale-x2:1" and pred.info.scale == 2
    pinned = LiveModel(f"upscale-x2:{v2.version}", str(store), "image2image", "cpu", 1, poll_s=0.0)
    assert pinned.current()[0].id == "upscale-x2:2"


def test_live_model_keeps_serving_when_the_new_version_is_broken(store, tmp_path):
    from aeflow.store import ModelStore
    from pipeline.serving_models import LiveModel

    live = LiveModel("ae", str(store), "encoder", "cpu", 1, poll_s=0.0)
    bad = pipeline_models().register(store, "ae", pipeline_models().encoder(tmp_path / "e.onnx"), "ae")
    (bad.path / "model.onnx").write_bytes(b"tampered")  # sha256 no longer matches the card
    ModelStore(store).set_alias("ae", "production", bad.version)
    assert live.current()[0].id == "ae:1"
    assert "sha256" in live.last_error


def test_live_model_refuses_the_wrong_role(store):
    from pipeline.predictor import JobConfigError
    from pipeline.serving_models import LiveModel

    with pytest.raises(JobConfigError, match="encoder"):
        LiveModel("denoise", str(store), "encoder", "cpu", 1, poll_s=1.0)


def test_shared_inference_equals_the_batch_worker(store, tmp_path):
    from PIL import Image

    from aeflow.store import ModelStore
    from pipeline import inference
    from pipeline.predictor import Predictor
    from pipeline.reader import Task
    from pipeline.worker import BatchWorker, WorkerSpec

    ref = ModelStore(store).resolve("denoise-cnn")
    imgs = [make_photo(20, 24, 1), make_photo(20, 24, 2), make_photo(40, 50, 3)]  # a bucket of two, one tiled
    tasks = []
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
        tasks.append(Task(str(tmp_path / f"{i}.png"), f"{i}.png", f"{i}.png", 0, 0))
    spec = WorkerSpec("denoise", str(ref.onnx_path()), ref.name, ref.version, ref.sha256, str(tmp_path / "out"),
                      tile=32)
    assert all(r["status"] == "ok" for r in BatchWorker(spec).process(tasks))
    outs = inference.image2image(Predictor(str(ref.onnx_path())), imgs, tile=32)
    for i, out in enumerate(outs):
        assert np.array_equal(out, np.asarray(Image.open(tmp_path / "out" / f"{i}.png")))


def test_api_model_runs_the_graph_the_batch_job_runs(tmp_path):
    """On CPU the shipped denoiser's int8 graph answers both `aeflow denoise` and the API: the same bytes back."""
    from PIL import Image

    from pipeline import inference
    from pipeline.runner import JobConfig, run_job
    from pipeline.serving_models import LiveModel

    empty = tmp_path / "empty-store"  # the shipped models resolve
    live = LiveModel("denoise", str(empty), "image2image", "cpu", 1, poll_s=0.0)
    ref, pred = live.current()
    assert live.precision == "int8" and pred.info.role == "image2image"
    img = make_photo(40, 52, 7)
    (tmp_path / "in").mkdir()
    Image.fromarray(img).save(tmp_path / "in" / "a.png")
    s = run_job(JobConfig(job="denoise", in_dir=tmp_path / "in", out_dir=tmp_path / "out", model="denoise",
                          store=empty, device="cpu", runner="local", progress=False))
    assert s["precision"] == live.precision
    (online,) = inference.image2image(pred, [img])
    assert np.array_equal(online, np.asarray(Image.open(tmp_path / "out" / "a.png")))


def test_shared_encoder_decode_equals_the_batch_worker_on_drafted_jpegs(store, tmp_path):
    from PIL import Image

    from aeflow.store import ModelStore
    from pipeline import inference
    from pipeline.predictor import Predictor
    from pipeline.reader import Task
    from pipeline.worker import BatchWorker, WorkerSpec

    ref = ModelStore(store).resolve("ae")  # an encoder with S = 8: JPEGs of >= 32 px a side decode smaller
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 150 wide, 200 high
    Image.fromarray(make_photo(150, 200, 1)).save(tmp_path / "0.jpg", quality=90, exif=exif.tobytes())
    Image.fromarray(make_photo(90, 120, 2)).save(tmp_path / "1.png")
    tasks = [Task(str(tmp_path / f), f, None, 0, 0) for f in ("0.jpg", "1.png")]
    spec = WorkerSpec("embed", str(ref.onnx_path()), ref.name, ref.version, ref.sha256, str(tmp_path / "out"))
    rows = BatchWorker(spec).process(tasks)
    assert [(r["status"], r["in_w"], r["in_h"]) for r in rows] == [("ok", 150, 200), ("ok", 120, 90)]
    pred = Predictor(str(ref.onnx_path()))
    decs = [inference.decode_for((tmp_path / f).read_bytes(), pred.info) for f in ("0.jpg", "1.png")]
    assert [(d.width, d.height) for d in decs] == [(150, 200), (120, 90)]
    assert decs[0].image.shape[:2] == (25, 19)  # drafted at 1/8, shown orientation; the PNG is whole
    assert decs[1].image.shape[:2] == (90, 120)
    for row, vec in zip(rows, inference.embed(pred, [d.image for d in decs])):
        assert np.array_equal(row["vector"], vec)
    denoise = Predictor(str(ModelStore(store).resolve("denoise").onnx_path())).info
    assert inference.decode_side(denoise) is None and inference.decode_side(pred.info) == 8
    assert inference.decode_for((tmp_path / "0.jpg").read_bytes(), denoise).image.shape == (200, 150, 3)


def test_plan_slots_checks_models_up_front(store, monkeypatch, tmp_path):
    from pipeline.serving import ServeConfig, plan_slots

    slots = plan_slots(ServeConfig(store=str(store)), "cpu")
    want = [("denoise", "denoise"), ("upscale", "upscale-x2"), ("embed", "photo-ae")]
    assert [(s.kind, s.spec) for s in slots] == want
    with pytest.raises(UsageError, match="no model named"):
        plan_slots(ServeConfig(store=str(store), denoise_model="nope"), "cpu")
    with pytest.raises(UsageError, match="needs image2image"):
        plan_slots(ServeConfig(store=str(store), denoise_model="ae"), "cpu")
    # an empty store still serves the models shipped in the package; with none shipped there is nothing to serve
    monkeypatch.setattr("aeflow.store.SHIPPED_ROOT", tmp_path / "nothing-shipped")
    with pytest.raises(UsageError, match="no model to serve"):
        plan_slots(ServeConfig(store=str(store / "empty")), "cpu")


def test_metrics_render_prometheus_text():
    from pipeline.serving_metrics import Metrics

    m = Metrics()
    m.observe("denoise", 200, 0.02, batch=4)
    m.observe("denoise", 413, 0.001)
    text = m.render()
    assert 'aeflow_requests_total{endpoint="denoise",code="413"} 1' in text
    assert 'aeflow_request_errors_total{endpoint="denoise"} 1' in text
    assert 'aeflow_request_seconds_bucket{endpoint="denoise",le="0.025"} 2' in text
    assert 'aeflow_batch_size_bucket{endpoint="denoise",le="2"} 0' in text
    assert 'aeflow_batch_size_bucket{endpoint="denoise",le="4"} 1' in text


def test_accept_header_parsing():
    from pipeline.serving_http import output_format

    assert output_format("image/webp,image/*;q=0.8") == "WEBP"
    assert output_format("text/html, image/jpeg") == "JPEG"
    assert output_format("*/*") is None and output_format("") is None


def test_cli_api_arguments():
    args = build_parser().parse_args(["api", "--autoscale", "1:3", "--upscale-model", "upscale-x2",
                                      "--upscale-model", "upscale-x4:2", "--batch-size", "1"])
    assert args.autoscale == (1, 3) and args.upscale_models == ["upscale-x2", "upscale-x4:2"]
    assert args.host == "127.0.0.1" and args.batch_size == 1
    from aeflow.cli.api import _min_max

    for bad in ("3:1", "x", "0:0", "1-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            _min_max(bad)


def test_bad_settings_are_usage_errors():
    from pipeline.serving import ServeConfig, start

    for cfg in (ServeConfig(replicas=0), ServeConfig(autoscale=(3, 1)), ServeConfig(autoscale=(0, 0)),
                ServeConfig(replica_cpus=0), ServeConfig(batch_wait_s=-1)):
        with pytest.raises(UsageError):
            start(cfg)  # refused before any Ray or Serve starts
