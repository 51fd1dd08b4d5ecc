"""`aeflow denoise|upscale|embed|index|search` as a user types them (in-process, local runner)."""
from __future__ import annotations

import json

import pytest

from aeflow.cli import build_parser, main


def test_help_and_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["denoise", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--device", "--address", "--batch-size", "--workers", "--format", "--overwrite",
                 "--runner", "--store", "--tile"):
        assert flag in text
    with pytest.raises(SystemExit) as e:
        main(["denoise", "in", "out", "--runner", "dask"])
    assert e.value.code == 2
    a = build_parser().parse_args(["upscale", "i", "o"])
    assert a.model == "upscale-x2" and a.runner == "auto" and a.tile == 512 and a.format == "same"
    assert build_parser().parse_args(["embed", "i", "o"]).model == "photo-ae"


def test_embed_index_search(store, images, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--store", str(store), "--runner", "local", "--no-progress"]
    assert main(["embed", str(images), str(out), *base]) == 3  # the 3 bad files
    assert main(["search", str(out), "--path", "a.jpg"]) == 2  # no index yet: usage error
    assert main(["index", str(out)]) == 0
    capsys.readouterr()
    assert main(["search", str(out), "--path", "a.jpg", "--k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res) == 2 and res[0]["path"] == "a.jpg"
    assert main(["search", str(out), "--image", str(images / "b.png"), "--store", str(store)]) == 0
    assert "b.png" in capsys.readouterr().out.splitlines()[0]
    # and the groups of near copies in the same output: every embedded image is in the table or alone
    assert main(["dedup", str(out), "--threshold", "0.99", "--no-progress", "--store", str(store)]) == 0
    said = capsys.readouterr().out
    assert "groups hold" in said and (out / "dedup" / "index.html").is_file()
    assert json.loads((out / "dedup" / "summary.json").read_text())["threshold"] == 0.99


def test_default_batch_size_per_job():
    from pipeline.defaults import DEFAULT_BATCH_SIZE
    from pipeline.runner import JobConfig

    sizes = {job: build_parser().parse_args([job, "i", "o"]).batch_size for job in ("denoise", "upscale", "embed")}
    assert sizes == {"denoise": 8, "upscale": 8, "embed": 64} == DEFAULT_BATCH_SIZE
    assert build_parser().parse_args(["embed", "i", "o", "--batch-size", "5"]).batch_size == 5
    # a JobConfig built without --batch-size (Prefect flows, scripts) gets the same per-job default
    assert JobConfig(job="embed", in_dir="i", out_dir="o", model="ae").batch_size == 64
    assert JobConfig(job="denoise", in_dir="i", out_dir="o", model="denoise").batch_size == 8
