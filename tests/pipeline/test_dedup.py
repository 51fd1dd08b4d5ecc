"""pipeline/dedup.py: known copies come back as groups, the threshold moves them, reruns are incremental, the page."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.dedup import components, find_groups
from pipeline.embeddings import EmbeddingWriter
from pipeline.index import build_index
from tests.conftest import make_photo

DIM = 16


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _collection(tmp_path):
    """Files and hand-made embeddings: a (3 copies at cosine ~0.99), b (2 at ~0.95), c and d the same bytes
    but unrelated vectors (an exact copy the model would miss), six loners."""
    rng = np.random.default_rng(0)
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    base = _unit(rng.standard_normal((4, DIM)))
    rows = {}
    for name, centre, spread in (("a0", 0, 0.0), ("a1", 0, 0.15), ("a2", 0, 0.15), ("b0", 1, 0.0), ("b1", 1, 0.33)):
        rows[name] = base[centre] + spread * _unit(rng.standard_normal(DIM))
    rows["c"], rows["d"] = base[2], base[3]
    for i in range(6):
        rows[f"loner{i}"] = rng.standard_normal(DIM)
    for i, name in enumerate(rows):
        Image.fromarray(make_photo(40 + i, 50, seed=i)).save(in_dir / f"{name}.png")
    shutil.copyfile(in_dir / "c.png", in_dir / "d.png")  # identical content
    with EmbeddingWriter(out, DIM, "m:1") as wr:
        names = list(rows)
        wr.add([f"{n}.png" for n in names], _unit(np.stack(list(rows.values()))), [50] * len(names),
               [40 + i for i in range(len(names))])
    (out / "_aeflow").mkdir()
    (out / "_aeflow" / "summary.json").write_text(json.dumps({"in_dir": str(in_dir)}))
    build_index(out, progress=False)
    return in_dir, out


def _groups(out) -> list[set[str]]:
    t = pq.read_table(out / "dedup" / "groups.parquet").to_pylist()
    by: dict[int, set[str]] = {}
    for r in t:
        by.setdefault(r["group"], set()).add(r["path"])
    return sorted(by.values(), key=lambda s: sorted(s))


def test_components_join_pairs_transitively():
    label = components(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert label[0] == label[1] == label[2] and label[4] == label[5] and len({label[0], label[3], label[4]}) == 3


def test_known_copies_come_back_as_groups_and_the_threshold_moves_them(tmp_path):
    in_dir, out = _collection(tmp_path)
    s = find_groups(out, threshold=0.9, k=5, progress=False)
    assert _groups(out) == [{"a0.png", "a1.png", "a2.png"}, {"b0.png", "b1.png"}, {"c.png", "d.png"}]
    assert s["groups"] == 3 and s["images_in_groups"] == 7 and s["exact_duplicates"] == 1
    rows = pq.read_table(out / "dedup" / "groups.parquet").to_pylist()
    assert rows[0]["group"] == 0 and len([r for r in rows if r["group"] == 0]) == 3  # largest group first
    reps = [r for r in rows if r["representative"]]
    assert len(reps) == 3 and all(r["similarity"] == pytest.approx(1.0) for r in reps)
    assert {r["match"] for r in rows if r["path"] in ("c.png", "d.png")} == {"representative", "exact"}
    # bytes that could be freed: every member but the representative of each group
    sizes = {p.name: p.stat().st_size for p in in_dir.iterdir()}
    assert s["bytes_freeable"] == sum(sizes[r["path"]] for r in rows if not r["representative"])
    assert (out / "dedup" / "groups.csv").read_text().splitlines()[0].startswith('"group","path"')
    # a stricter threshold keeps only the tightest copies (and the exact pair, which needs no threshold)
    find_groups(out, threshold=0.97, k=5, progress=False)
    assert _groups(out) == [{"a0.png", "a1.png", "a2.png"}, {"c.png", "d.png"}]
    find_groups(out, threshold=0.999, k=5, progress=False)
    assert _groups(out) == [{"c.png", "d.png"}]


def test_rerun_queries_and_hashes_only_what_is_new(tmp_path):
    in_dir, out = _collection(tmp_path)
    first = find_groups(out, threshold=0.9, k=5, progress=False, page=False)
    assert first["queried"] == 13 and first["hashed"] == 13
    again = find_groups(out, threshold=0.8, k=5, progress=False, page=False)  # a new threshold: all cached
    assert again["queried"] == 0 and again["hashed"] == 0
    # a new image close to loner0 is embedded and the index updated: only it is queried, and it joins loner0
    loner0 = pq.read_table(next((out / "embeddings").glob("*.parquet"))).to_pylist()
    v = np.array(next(r["vector"] for r in loner0 if r["path"] == "loner0.png"), np.float32)
    Image.fromarray(make_photo(30, 30, seed=99)).save(in_dir / "new.png")
    with EmbeddingWriter(out, DIM, "m:1", prefix="more") as wr:
        wr.add(["new.png"], _unit(v + 0.05 * np.ones(DIM, np.float32))[None], [30], [30])
    build_index(out, progress=False)
    third = find_groups(out, threshold=0.9, k=5, progress=False, page=False)
    assert third["queried"] == 1 and third["hashed"] == 1
    assert {"loner0.png", "new.png"} in _groups(out)


def test_errors_are_clear(tmp_path):
    from pipeline.embeddings import EmbeddingsError

    with pytest.raises(EmbeddingsError, match="no embeddings"):
        find_groups(tmp_path, progress=False)
    _, out = _collection(tmp_path)
    with pytest.raises(EmbeddingsError, match="threshold"):
        find_groups(out, threshold=1.5, progress=False)


def test_review_page_loads_in_a_real_browser(tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed; CI must check the dedup page in a browser "
                        "(apt-get install -y chromium)")
        pytest.skip("chromium not installed here (CI installs it and then this check is required)")
    _, out = _collection(tmp_path)
    find_groups(out, threshold=0.9, k=5, progress=False)
    page = out / "dedup" / "index.html"
    assert "http" not in page.read_text().replace("http-equiv", "")  # nothing fetched from a network
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                        "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = r.stdout
    assert r.returncode == 0 and 'data-loaded="7"' in dom and 'data-broken="0"' in dom, r.stderr[-2000:]
    assert dom.count('class="group"') == 3 and '7 thumbnails shown</span>' in dom and '<b>exact ' in dom
