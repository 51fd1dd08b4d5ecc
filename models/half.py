"""fp16 graphs of image2image models for CUDA: the fp32 graph with float16 weights and activations, kept if PSNR holds.

uint8 in and out stay as they are (the casts inside the graph now go to and from float16), so the pipeline runs
the fp16 graph exactly like model.onnx. Tensor cores run float16 convolutions at several times the float32 rate;
the graph is judged on held-out photos against model.onnx by the int8 gate's rule (models/quantize.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

from aeflow.store import FP16_FILE

log = logging.getLogger(__name__)

MAX_LOSS_DB = 0.1  # the same bound as the int8 graph's, on photos no model trained on


def convert_fp16(fp32: Path, out: Path) -> None:
    """Write `fp32`'s graph with float16 weights and arithmetic to `out` (uint8 inputs and outputs unchanged)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from models.quantize import copy_metadata

    model = onnx.load(str(fp32))
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx.checker.check_model(half)
    onnx.save(half, str(out))
    copy_metadata(fp32, out, {"aeflow.precision": "fp16"})


def build_fp16(kind: str, scale: int, fp32: Path, out: Path) -> dict:
    """Convert fp32 (an exported model.onnx) to `out`; removed again when it loses > MAX_LOSS_DB on held-out photos."""
    from models.data import HELDOUT_PHOTOS
    from models.quantize import loss_db, psnr_check

    if kind not in ("denoise", "upscale"):
        raise ValueError(f"fp16 graphs are built for denoise and upscale models, not {kind!r}")
    fp32, out = Path(fp32), Path(out)
    convert_fp16(fp32, out)
    # onnxruntime's CPU provider runs float16 graphs too (slowly), so the gate needs no GPU
    check = psnr_check(kind, scale, fp32, out, seed=2, label="fp16", photos=HELDOUT_PHOTOS)
    loss = loss_db(check)
    facts = {"file": out.name, "check": check, "check_photos": list(HELDOUT_PHOTOS), "max_loss_db": MAX_LOSS_DB,
             "kept": loss <= MAX_LOSS_DB}
    if not facts["kept"]:
        log.warning("fp16 graph loses %.3f dB of mean PSNR (> %.2f): not kept", loss, MAX_LOSS_DB)
        out.unlink()
    return facts


def add_fp16_to_folder(version_dir: str | Path) -> dict:
    """Build the fp16 graph of a version folder (model.onnx + card.json); the card gains `fp16` and its sha256."""
    import json

    from aeflow.store import CARD, MODEL_FILE
    from models.quantize import record_graph

    d = Path(version_dir)
    card = json.loads((d / CARD).read_text())
    facts = build_fp16(card["kind"], int(card["settings"].get("scale") or 1), d / MODEL_FILE, d / FP16_FILE)
    record_graph(d, "fp16", FP16_FILE, facts)
    return facts


def main(argv: list[str] | None = None) -> int:
    """python -m models.half VERSION_DIR [...]: add the fp16 graph to stored or shipped version folders."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m models.half", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, metavar="VERSION_DIR")
    args = ap.parse_args(argv)
    for d in args.dirs:
        facts = add_fp16_to_folder(d)
        print(f"{d}: fp16 {'kept' if facts['kept'] else 'not kept'}, delta {facts['check']['delta_db']} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
