"""Security: nothing is written outside OUT_DIR, models load only with a matching sha256 card,
nothing untrusted is unpickled, servers bind 127.0.0.1.

Also covered elsewhere: compose ports bind 127.0.0.1 (tests/test_compose.py, test_published_ports_bind_
localhost_only); the API bounds request bytes and pixels (tests/serving/test_serving_api.py, test_bad_input_is_
refused_and_service_keeps_answering); a tampered or card-less model: test_faults.py.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from aeflow.cli import main
from pipeline.manifest import load_state
from pipeline.writer import OutputPathError, confined_path, write_bytes_atomic
from tests.conftest import make_photo

REPO = Path(__file__).resolve().parents[2]
CODE_DIRS = ("aeflow", "models", "pipeline", "flows", "bench")


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in d.rglob("*") if p.is_file() and not p.is_symlink()}


def test_symlinks_in_out_dir_never_redirect_a_write(store, tmp_path):
    src, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    for rel in ("sub/a.png", "b.png", "c.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_photo(16, 16)).save(src / rel)
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"precious")
    out.mkdir()
    os.symlink(outside, out / "sub")  # a folder link leading out of OUT_DIR
    os.symlink(outside / "victim.png", out / "b.png")  # the output itself is a link to a file outside
    os.symlink(outside / "victim.png", out / ".c.png.aeflow.tmp")  # a planted temp name
    before = _snapshot(outside)
    rc = main(["denoise", str(src), str(out), "--model", "denoise", "--store", str(store), "--runner", "local",
               "--no-progress"])
    assert rc == 3
    rows = load_state(out)
    assert rows["sub/a.png"]["status"] == "failed" and "outside" in rows["sub/a.png"]["error"]
    assert rows["b.png"]["status"] == "ok" and rows["c.png"]["status"] == "ok"
    assert _snapshot(outside) == before and sorted(p.name for p in outside.iterdir()) == ["victim.png"]
    assert (out / "b.png").is_file() and not (out / "b.png").is_symlink()  # the link was replaced, not followed


@pytest.mark.parametrize("rel", ["../x.png", "/etc/x.png", "a/../../x.png", "a\\..\\x.png", "./x.png", "",
                                 "_aeflow/manifest/x.jsonl", "embeddings/part-00000.parquet"])
def test_output_paths_are_confined(tmp_path, rel):
    with pytest.raises(OutputPathError):
        confined_path(tmp_path.resolve(), rel)
    assert not (tmp_path.parent / "x.png").exists()


def test_atomic_write_never_follows_a_planted_temp_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, tmp_path / ".out.png.aeflow.tmp")
    write_bytes_atomic(tmp_path / "out.png", b"data")
    assert victim.read_bytes() == b"precious" and (tmp_path / "out.png").read_bytes() == b"data"


def _code_files():
    for d in CODE_DIRS:
        yield from sorted((REPO / d).rglob("*.py"))


def _call_text(text: str, open_paren: int) -> str:
    """The call's text from its '(' to the matching ')'."""
    depth = 0
    for i in range(open_paren, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_paren:i + 1]
    return text[open_paren:]


def test_nothing_untrusted_is_unpickled():
    """torch.load only with weights_only=True; no pickle/joblib/dill loads, no np.load(allow_pickle=True)."""
    bad = []
    for f in _code_files():
        text = f.read_text(encoding="utf-8")
        for m in re.finditer(r"torch\.load\(", text):
            call = _call_text(text, m.end() - 1)
            if "weights_only=True" not in call:
                bad.append(f"{f}: {call}")
        for pat in (r"\bpickle\.loads?\(", r"\bcloudpickle\.loads?\(", r"\bjoblib\.load\(", r"\bdill\.loads?\(",
                    r"allow_pickle\s*=\s*True", r"\bshelve\.open\(", r"\bmarshal\.loads?\("):
            bad += [f"{f}: {pat}" for _ in re.finditer(pat, text)]
    assert not bad, bad
    assert any("weights_only=True" in f.read_text() for f in _code_files())  # the one torch.load is checked


def test_servers_default_to_localhost():
    """Every bind address in the code is 127.0.0.1 (compose publishes to 127.0.0.1: tests/test_compose.py)."""
    from aeflow.cli import build_parser

    args = build_parser().parse_args(["api"])
    assert args.host == "127.0.0.1"
    for f in _code_files():
        assert "0.0.0.0" not in f.read_text(encoding="utf-8"), f
