"""bench/s3.py end to end on a few photos: the same job on local files and on its own local S3 server."""
from __future__ import annotations

import json

from bench import s3 as bench_s3


def test_s3_bench_reports_each_pair_of_runs_and_both_clients(tmp_path, monkeypatch):
    monkeypatch.setenv("AEFLOW_HOME", str(tmp_path / "no-store"))  # the shipped models
    out = tmp_path / "s3.json"
    assert bench_s3.main(["--n", "6", "--size", "64", "--jobs", "embed", "--repeat", "1", "--objects", "5",
                          "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    job = r["jobs"]["embed"]
    assert {k: [x["ok"] for x in v] for k, v in job["runs"].items()} == {"local": [6], "s3": [6], "s3_to_local": [6]}
    assert job["s3_over_local"] > 0 and job["s3_to_local_over_local"] > 0
    c = r["clients"]
    assert c["objects"] == 5 and c["boto3_get_per_s"] > 0 and c["pyarrow_get_per_s"] > 0
