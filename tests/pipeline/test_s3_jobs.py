"""Batch jobs, index, search and dedup on s3:// folders of a real local S3 server (moto), through the CLI."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from pipeline_models import photo, save

from aeflow.cli import main
from tests.conftest import S3_KEY_ID, S3_SECRET

CLI = [sys.executable, "-m", "aeflow.cli"]


def _summary(s3, url: str) -> dict:
    return json.loads(s3.get(f"{url}/_aeflow/summary.json"))


def _decodes(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
    return True


def _no_secrets(s3, url: str, *texts: str) -> None:
    for key in s3.keys(url):
        body = s3.get(f"{url}/{key}")
        assert S3_SECRET.encode() not in body and S3_KEY_ID.encode() not in body, key
    for t in texts:
        assert S3_SECRET not in t and S3_KEY_ID not in t


def test_denoise_s3_to_s3_bad_objects_fail_only_their_rows_and_rerun_skips(s3, store, images, capsys):
    s3.upload(images, f"s3://{s3.inp}/2026")
    src, out = f"s3://{s3.inp}/2026/", f"s3://{s3.out}/clean"
    rc = main(["-v", "denoise", src, out, "--store", str(store), "--no-progress", "--batch-size", "2"])
    assert rc == 3
    s = _summary(s3, out)
    assert s["counts"] == {"total": 7, "ok": 4, "failed": 3, "skipped": 0}
    assert s["in_dir"] == src.rstrip("/") and s["out_dir"] == out
    keys = s3.keys(out)
    for rel in ("a.jpg", "b.png", "sub/c.png", "sub/deep/d.webp"):
        assert _decodes(s3.get(f"{out}/{rel}"))
    assert not any(k.endswith("readme.txt") or k.startswith("_aeflow/plan") or k.endswith(".tmp") for k in keys)
    assert "_aeflow/lock" not in keys  # released
    rows = [json.loads(line) for k in sorted(keys) if k.startswith("_aeflow/manifest/")
            for line in s3.get(f"{out}/{k}").decode().splitlines()]
    assert {r["path"] for r in rows if r["status"] == "failed"} == {"broken.jpg", "empty.png", "notes.png"}
    assert all(r["etag"] for r in rows if r["status"] == "ok")
    rc = main(["denoise", src, out, "--store", str(store), "--no-progress"])
    assert rc == 3 and _summary(s3, out)["counts"]["skipped"] == 4  # the failed ones are tried again
    # a changed object (new ETag) is redone, the others stay skipped
    s3.client.put_object(Bucket=s3.inp, Key="2026/b.png", Body=s3.get(f"{src}b.png") + b"")
    buf = io.BytesIO()
    Image.fromarray(photo(24, 32, 9)).save(buf, format="PNG")
    s3.client.put_object(Bucket=s3.inp, Key="2026/b.png", Body=buf.getvalue())
    main(["denoise", src, out, "--store", str(store), "--no-progress"])
    assert _summary(s3, out)["counts"]["ok"] == 1
    _no_secrets(s3, out, *capsys.readouterr())


def test_mixed_local_and_s3_embed_index_search_dedup(s3, store, images, tmp_path, capsys):
    s3.upload(images, f"s3://{s3.inp}/p")
    src = f"s3://{s3.inp}/p"
    local = tmp_path / "emb"
    assert main(["embed", src, str(local), "--store", str(store), "--model", "ae", "--no-progress"]) == 3
    assert json.loads((local / "_aeflow" / "summary.json").read_text())["counts"]["ok"] == 4
    # dedup of a local output hashes and shows the S3 inputs it was embedded from
    assert main(["index", str(local)]) == 0 and main(["dedup", str(local), "--no-progress"]) == 0
    d = json.loads((local / "dedup" / "summary.json").read_text())
    assert d["hashed"] == 4 and d["in_dir"] == src
    from pipeline.dedup_page import _thumb

    assert _thumb(f"{src}/a.jpg").startswith("data:image/jpeg;base64,")  # the page's thumbnails, from S3
    # the other way round: a local folder into S3, then index, search and dedup on the S3 output
    out = f"s3://{s3.out}/emb"
    assert main(["embed", str(images), out, "--store", str(store), "--model", "ae", "--no-progress"]) == 3
    assert [k for k in s3.keys(out) if k.startswith("embeddings/")] == ["embeddings/part-00001.parquet"]
    assert main(["index", out]) == 0
    assert "index/index.json" in s3.keys(out)
    capsys.readouterr()
    assert main(["search", out, "--path", "a.jpg", "--k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["path"] == "a.jpg" and len(hits) == 2
    assert main(["dedup", out, "--no-progress", "--threshold", "0.999"]) == 0
    page = s3.get(f"{out}/dedup/index.html").decode()
    assert "<html" in page and {"dedup/groups.parquet", "dedup/groups.csv"} <= set(s3.keys(out))
    # incremental: a new image embedded into the same S3 output, the index updated in place
    save(images / "new.png", photo(24, 32, 1))
    main(["embed", str(images), out, "--store", str(store), "--model", "ae", "--no-progress"])
    assert main(["index", out]) == 0
    meta = json.loads(s3.get(f"{out}/index/index.json"))
    assert meta["count"] == 5
    _no_secrets(s3, out, *capsys.readouterr())


def test_missing_bucket_or_denied_access_stop_before_any_work(s3, s3_server, store, images, capsys):
    s3.upload(images, f"s3://{s3.inp}/p")
    assert main(["denoise", "s3://no-such-input-bucket/p", f"s3://{s3.out}/o", "--store", str(store)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["denoise", f"s3://{s3.inp}/p", "s3://no-such-output-bucket/o", "--store", str(store)]) == 2
    s3_server.deny = True
    assert main(["denoise", f"s3://{s3.inp}/p", f"s3://{s3.out}/o", "--store", str(store)]) == 2
    assert "denied" in capsys.readouterr().err
    s3_server.deny = False
    assert s3.keys(f"s3://{s3.out}") == {}


def test_same_or_nested_s3_folders_are_refused(s3, store, capsys):
    assert main(["denoise", f"s3://{s3.inp}/a", f"s3://{s3.inp}/a/", "--store", str(store)]) == 2
    assert main(["denoise", f"s3://{s3.inp}/a/b", f"s3://{s3.inp}/a", "--store", str(store)]) == 2
    assert "inside OUT_DIR" in capsys.readouterr().err


def test_left_over_multipart_uploads_under_out_dir_are_aborted(s3, store, images):
    s3.upload(images, f"s3://{s3.inp}/p")
    s3.client.create_multipart_upload(Bucket=s3.out, Key="o/a.jpg")
    main(["denoise", f"s3://{s3.inp}/p", f"s3://{s3.out}/o", "--store", str(store), "--no-progress"])
    assert s3.client.list_multipart_uploads(Bucket=s3.out).get("Uploads", []) == []


def _many(tmp_path, n: int, size: int = 48):
    d = tmp_path / "many"
    for i in range(n):
        save(d / f"{i:03d}.png", photo(size, size, i))
    return d


def _wait_for(pred, timeout: float = 120) -> None:
    t = time.time()
    while not pred():
        if time.time() - t > timeout:
            raise TimeoutError
        time.sleep(0.05)


def _outputs(s3, url: str) -> dict[str, int]:
    return {k: v for k, v in s3.keys(url).items() if not k.startswith("_aeflow/")}


def test_resume_after_the_driver_is_killed(s3, store, tmp_path):
    n = 200
    s3.upload(_many(tmp_path, n, 64), f"s3://{s3.inp}/p")
    src, out = f"s3://{s3.inp}/p", f"s3://{s3.out}/o"
    cmd = [*CLI, "denoise", src, out, "--store", str(store), "--model", "denoise-cnn", "--batch-size", "1",
           "--no-progress", "--runner", "local"]
    p = subprocess.Popen(cmd, env=s3.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:  # killed once some rows are on record (the manifest's first object)
        _wait_for(lambda: any(k.startswith("_aeflow/manifest/") for k in s3.keys(out)) or p.poll() is not None)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert "_aeflow/lock" in s3.keys(out)  # the killed driver's lock, taken over below
    r = subprocess.run(cmd, env=s3.env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = _summary(s3, out)
    assert s["counts"]["total"] == n and s["counts"]["failed"] == 0 and s["counts"]["skipped"] > 0
    outs = _outputs(s3, out)
    assert len(outs) == n and all(_decodes(s3.get(f"{out}/{k}")) for k in outs)


def test_the_server_stopped_and_restarted_mid_job(s3, s3_server, store, tmp_path):
    n = 120
    s3.upload(_many(tmp_path, n), f"s3://{s3.inp}/p")
    src, out = f"s3://{s3.inp}/p", f"s3://{s3.out}/o"
    cmd = [*CLI, "denoise", src, out, "--store", str(store), "--model", "denoise-cnn", "--batch-size", "1",
           "--no-progress", "--runner", "local"]
    p = subprocess.Popen(cmd, env=s3.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def outage() -> None:
        _wait_for(lambda: len(_outputs(s3, out)) >= 10 or p.poll() is not None)
        s3_server.down()
        time.sleep(2.0)
        s3_server.up()

    t = threading.Thread(target=outage)
    t.start()
    _, err = p.communicate(timeout=300)
    t.join()
    assert p.returncode == 0, err[-2000:]
    s = _summary(s3, out)
    assert s["counts"] == {"total": n, "ok": n, "failed": 0, "skipped": 0}
    assert s["s3_retries"] > 0
    outs = _outputs(s3, out)
    assert len(outs) == n and all(_decodes(s3.get(f"{out}/{k}")) for k in outs)
    expected = {f"{i:03d}.png" for i in range(n)}
    assert set(outs) == expected


@pytest.mark.parametrize("kind,model", [("denoise", "denoise"), ("upscale", "upscale-x2")])
def test_output_pixels_match_a_local_run(s3, store, images, tmp_path, kind, model):
    s3.upload(images, f"s3://{s3.inp}/p")
    main([kind, f"s3://{s3.inp}/p", f"s3://{s3.out}/o", "--store", str(store), "--model", model, "--no-progress"])
    main([kind, str(images), str(tmp_path / "local"), "--store", str(store), "--model", model, "--no-progress"])
    for rel in ("a.jpg", "b.png", "sub/c.png"):
        a = np.asarray(Image.open(io.BytesIO(s3.get(f"s3://{s3.out}/o/{rel}"))))
        b = np.asarray(Image.open(tmp_path / "local" / rel))
        assert np.array_equal(a, b)
