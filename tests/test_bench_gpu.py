"""bench/gpu.py's dry mode on CPU: every section runs and lands in one JSON file, as the GPU run will write it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--jobs", "denoise,embed",
                        "--n", "6", "--seconds", "0.2", "--work", str(tmp_path / "work"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["dry_run"] and doc["device"] == "cpu" and set(doc["results"]) == {"denoise", "embed"}
    den, emb = doc["results"]["denoise"], doc["results"]["embed"]
    for res in (den, emb):
        for graph in ("fp32", "fp16"):
            mo = res["model_only"][graph]
            assert mo["images_per_s"] > 0 and mo["providers"] == ["CPUExecutionProvider"]
        assert res["decode_floor"]["images_per_s"] > 0 and res["torch"]["torch_fp32"]["images_per_s"] > 0
    assert den["model_only"]["fp16"]["graph"] == "model.fp16.onnx"  # the shipped, PSNR-gated graph
    jobs = den["job"]
    # on CPU `--precision auto` is the int8 graph; the fp32 run and the big (tiled) photo complete too
    assert jobs["precision_auto_binding_auto"]["precision"] == "int8"
    assert jobs["precision_fp32_binding_auto"]["precision"] == "fp32"
    assert all(j["images"] == 6 for k, j in jobs.items() if k != "big_photo")
    assert jobs["big_photo"]["images"] == 1
    assert emb["job"]["precision_auto_binding_0"]["images"] == 6
    assert {"denoise_fp16_over_fp32", "denoise_e2e_over_model_only", "embed_e2e_over_decode_floor"} <= set(
        doc["ratios"])
    assert doc["nvidia_smi"] is False or isinstance(doc["nvidia_smi"], bool)


def test_benchmark_photos_need_no_scikit_image():
    """The GPU machine has no scikit-image: the photo sources fall back to synthetic scenes."""
    code = ("import sys; sys.modules['skimage'] = None; sys.path.insert(0, %r); "
            "from bench._photos import _sources; s = _sources(); "
            "assert len(s) >= 4 and all(a.ndim == 3 and a.shape[2] == 3 and a.dtype.name == 'uint8' for a in s); "
            "print('ok')") % str(ROOT)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
