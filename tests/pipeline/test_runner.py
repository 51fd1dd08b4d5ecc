"""The jobs end to end on the local runner (no cluster): isolation, exit codes, resume, formats, embed."""
from __future__ import annotations

import json
import os
import time

import numpy as np
from pipeline_models import photo, save

from aeflow.cli import main
from pipeline.manifest import load_state
from pipeline.runner import JobConfig, run_job


def _run(store, src, out, job="denoise", model=None, **kw):
    model = model or {"denoise": "denoise", "upscale": "upscale-x2", "embed": "ae"}[job]
    return run_job(JobConfig(job=job, in_dir=src, out_dir=out, model=model, store=store, runner="local",
                             progress=False, **kw))


def _cli(store, *args):
    return main([*args, "--store", str(store), "--runner", "local", "--no-progress"])


def test_bad_files_fail_alone(store, images, tmp_path):
    out = tmp_path / "out"
    assert _cli(store, "denoise", str(images), str(out), "--batch-size", "3") == 3
    state = load_state(out)
    assert {p for p, r in state.items() if r["status"] == "failed"} == {"broken.jpg", "empty.png", "notes.png"}
    ok = {p for p, r in state.items() if r["status"] == "ok"}
    assert ok == {"a.jpg", "b.png", "sub/c.png", "sub/deep/d.webp"}
    for p in ok:
        assert (out / p).is_file()
    assert "0 bytes" in state["empty.png"]["error"]
    assert not (out / "broken.jpg").exists()
    summary = json.loads((out / "_aeflow" / "summary.json").read_text())
    assert summary["counts"] == {"total": 7, "ok": 4, "failed": 3, "skipped": 0}
    assert summary["exit_code"] == 3 and summary["device"] == "cpu" and summary["model"]["name"] == "denoise"
    r = state["sub/c.png"]
    assert (r["in_w"], r["in_h"], r["out_w"], r["out_h"]) == (28, 20, 28, 20) and r["model_sha256"]
    assert r["in_bytes"] == (images / "sub/c.png").stat().st_size and r["mtime_ns"] and r["out_bytes"] > 0


def test_exit_codes(store, images, tmp_path):
    good = tmp_path / "good"
    save(good / "x.png", photo(16, 16))
    assert _cli(store, "denoise", str(good), str(tmp_path / "o1")) == 0
    assert _cli(store, "denoise", str(tmp_path / "missing"), str(tmp_path / "o2")) == 2
    assert _cli(store, "denoise", str(good), str(good)) == 2  # IN_DIR == OUT_DIR
    save(good / "sub" / "y.png", photo(16, 16))
    assert _cli(store, "denoise", str(good / "sub"), str(good)) == 2  # IN_DIR inside OUT_DIR
    assert _cli(store, "denoise", str(good), str(tmp_path / "o3"), "--model", "nope") == 2
    assert _cli(store, "embed", str(good), str(tmp_path / "o4"), "--model", "denoise") == 2  # wrong role
    assert _cli(store, "denoise", str(good), str(tmp_path / "o5"), "--device", "cuda") == 2  # no GPU here
    assert not (tmp_path / "o5" / "x.png").exists()


def test_tampered_model_is_refused(store, tmp_path):
    import shutil

    from aeflow.store import ModelStore

    st = tmp_path / "st"
    shutil.copytree(store, st)
    f = ModelStore(st).resolve("denoise").path / "model.onnx"
    f.write_bytes(f.read_bytes() + b"\0")
    good = tmp_path / "good"
    save(good / "x.png", photo(16, 16))
    assert _cli(st, "denoise", str(good), str(tmp_path / "o")) == 2


def test_resume_and_incremental(store, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        save(src / f"{i}.png", photo(16, 16, i))
    assert _run(store, src, out)["counts"]["ok"] == 3
    first = {p: (out / p).stat().st_mtime_ns for p in ("0.png", "1.png", "2.png")}
    time.sleep(0.01)
    save(src / "3.png", photo(16, 16, 3))  # new
    save(src / "1.png", photo(16, 16, 11))  # changed
    s = _run(store, src, out)
    assert s["counts"] == {"total": 4, "ok": 2, "failed": 0, "skipped": 2}
    assert (out / "0.png").stat().st_mtime_ns == first["0.png"]  # unchanged: not rewritten
    assert (out / "1.png").stat().st_mtime_ns != first["1.png"]
    rows = load_state(out)
    assert rows["0.png"]["status"] == "skipped" and rows["1.png"]["status"] == "ok"
    assert _run(store, src, out)["counts"]["skipped"] == 4
    (out / "2.png").unlink()  # an output deleted by hand is redone
    assert _run(store, src, out)["counts"]["ok"] == 1
    assert _run(store, src, out, overwrite=True)["counts"]["ok"] == 4
    # the model changed: everything is redone
    assert _run(store, src, out, model="denoise-cnn")["counts"]["ok"] == 4


def test_failed_inputs_are_retried(store, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", photo(16, 16))
    (src / "b.png").write_bytes(b"junk")
    assert _run(store, src, out)["counts"]["failed"] == 1
    save(src / "b.png", photo(16, 16, 5))
    s = _run(store, src, out)
    assert s["counts"] == {"total": 2, "ok": 1, "failed": 0, "skipped": 1} and s["exit_code"] == 0


def test_format_conversion_and_collision(store, tmp_path):
    from PIL import Image

    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.jpg", photo(16, 16, 1), quality=90)
    save(src / "a.png", photo(16, 16, 2))
    save(src / "b.webp", photo(16, 16, 3))
    s = _run(store, src, out, format="png")
    assert s["counts"]["ok"] == 2 and s["counts"]["failed"] == 1
    state = load_state(out)
    assert state["a.jpg"]["output"] == "a.png" and "collides" in state["a.png"]["error"]
    assert Image.open(out / "a.png").format == "PNG" and Image.open(out / "b.png").format == "PNG"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["a.png", "b.png"]
    s = _run(store, src, tmp_path / "out2", format="jpg")
    assert Image.open(tmp_path / "out2" / "b.jpg").format == "JPEG"


def test_symlink_in_input_tree_never_writes_outside(store, tmp_path):
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    save(elsewhere / "outside.png", photo(16, 16))
    save(src / "a.png", photo(16, 16))
    os.symlink(elsewhere / "outside.png", src / "link.png")  # file link: read, output mirrors the link's name
    os.symlink(elsewhere, src / "dirlink")  # folder link: not followed
    out.mkdir()
    before = sorted(p.name for p in elsewhere.iterdir())
    s = _run(store, src, out)
    assert s["counts"]["ok"] == 2
    assert (out / "link.png").is_file() and not (out / "link.png").is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_out_dir_inside_in_dir_is_not_listed(store, tmp_path):
    src = tmp_path / "in"
    save(src / "a.png", photo(16, 16))
    for _ in range(2):
        s = _run(store, src, src / "denoised")
    assert s["counts"] == {"total": 1, "ok": 0, "failed": 0, "skipped": 1}


def test_upscale_sizes(store, images, tmp_path):
    s = _run(store, images, tmp_path / "out", job="upscale", tile=16)
    assert s["counts"]["ok"] == 4
    r = load_state(tmp_path / "out")["sub/deep/d.webp"]
    assert (r["out_w"], r["out_h"]) == (2 * r["in_w"], 2 * r["in_h"]) == (36, 60)


def test_embed_writes_vectors_once(store, images, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    s = _run(store, images, out, job="embed", batch_size=2)
    assert s["counts"]["ok"] == 4 and s["exit_code"] == 3
    parts = sorted((out / "embeddings").glob("part-*.parquet"))
    t = pq.read_table(parts)
    assert sorted(t.column("path").to_pylist()) == ["a.jpg", "b.png", "sub/c.png", "sub/deep/d.webp"]
    v = np.stack(t.column("vector").to_numpy(zero_copy_only=False))
    assert v.shape == (4, 12) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    row = t.to_pylist()[t.column("path").to_pylist().index("sub/c.png")]
    assert (row["width"], row["height"], row["model"]) == (28, 20, "ae:1")
    # rerun: nothing new; an orphan part (killed before its rows) is dropped, its paths redone once
    assert _run(store, images, out, job="embed")["counts"]["skipped"] == 4
    (images / "sub" / "c.png").unlink()
    save(images / "sub" / "c.png", photo(20, 28, 33))
    from pipeline.embeddings import EmbeddingWriter

    w = EmbeddingWriter(out, 12, "ae:1")
    w.add(["a.jpg"], np.ones((1, 12), np.float32), [1], [1])
    w.close()
    s = _run(store, images, out, job="embed")
    assert s["counts"]["ok"] == 1 and s["counts"]["skipped"] == 3
    t = pq.read_table(sorted((out / "embeddings").glob("part-*.parquet")))
    paths = t.column("path").to_pylist()
    assert paths.count("a.jpg") == 1 and paths.count("sub/c.png") == 2  # the old c.png vector is superseded
    from pipeline.embeddings import read_embeddings

    latest = read_embeddings(out)
    assert sorted(latest.column("path").to_pylist()) == ["a.jpg", "b.png", "sub/c.png", "sub/deep/d.webp"]
