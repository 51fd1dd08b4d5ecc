"""A very large input (12000x9000) runs in tiles; the worker's peak memory is measured against a small image."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.reliability.inputs import flat_png

REPO = Path(__file__).resolve().parents[2]
# Run one BatchWorker on one file in a fresh process and report its peak RSS (ru_maxrss, KiB on Linux).
_PROBE = """
import json, os, resource, sys
from aeflow.store import ModelStore
from pipeline.reader import Task
from pipeline.worker import BatchWorker, WorkerSpec
store, path, out, tile = sys.argv[1:5]
ref = ModelStore(store).resolve("denoise")
spec = WorkerSpec("denoise", str(ref.onnx_path()), ref.name, ref.version, ref.sha256, out, threads=1,
                  tile=int(tile), batch_size=4)
worker = BatchWorker(spec)
st = os.stat(path)
row = worker.process([Task(path, os.path.basename(path), os.path.basename(path), st.st_size, st.st_mtime_ns)])[0]
print(json.dumps({"row": row, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
TILE = 512
W, H = 12000, 9000


def _probe(store: Path, image: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", _PROBE, str(store), str(image), str(out), str(TILE)],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_very_large_image_is_tiled_with_bounded_memory(store, tmp_path):
    small = flat_png(tmp_path / "small.png", 64, 48)
    large = flat_png(tmp_path / "large.png", W, H)
    out = tmp_path / "out"
    base = _probe(store, small, out)
    big = _probe(store, large, out)
    assert big["row"]["status"] == "ok", big["row"]
    assert (big["row"]["out_w"], big["row"]["out_h"]) == (W, H)
    delta = (big["peak_kib"] - base["peak_kib"]) * 1024
    image_bytes = W * H * 3  # one decoded uint8 copy
    # Untiled, the model alone would hold several float32 H×W×3 tensors (4 bytes each: >= 4 x image_bytes per
    # tensor). Tiled, it holds batch_size tiles of (TILE+2*halo)^2 pixels; the rest is uint8 copies of the
    # image: at the peak, Pillow's decoded image (4 bytes/pixel) plus its uint8 copy; Pillow cannot stream PNG.
    tile_bytes = 4 * (TILE + 4) ** 2 * 3 * 4  # a batch of 4 tiles as float32
    print(f"peak RSS: small {base['peak_kib'] / 1024:.0f} MiB, 12000x9000 {big['peak_kib'] / 1024:.0f} MiB, "
          f"delta {delta / 2**20:.0f} MiB = {delta / image_bytes:.2f} x the decoded image")
    assert delta <= 2.75 * image_bytes + 16 * tile_bytes, delta
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(out / "large.png") as im:  # a real PNG of the full size
            assert im.size == (W, H)
