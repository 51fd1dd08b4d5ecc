"""The codebase's own rules, checked by the test command: ruff's lint and the import layers (pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    r = _run(str(BIN / "ruff"), "check", "aeflow", "pipeline", "models", "flows", "bench", "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_layers_hold():
    """The CLI on top, nothing imports it; flows over pipeline | models; the bottom imports nothing above it."""
    r = _run(str(BIN / "lint-imports"), "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 kept, 0 broken" in r.stdout, r.stdout
