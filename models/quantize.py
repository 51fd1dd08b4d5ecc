"""int8 graphs of image2image models: static QDQ quantization with bias correction, kept only if PSNR holds.

Recipe measured in bench/int8.py (bench/results/int8.json, docs/benchmarks.md): per-channel int8 weights,
uint8 activations, Percentile(99.999) calibration on training crops, Conv + Relu only, one conv left in float
(denoise: the last, which predicts the noise; upscale: the fixed bicubic skip), then bias correction
(Nagel et al. 2019, "Data-Free Quantization", sec. 4.2: b -= E[conv(x, W_int8 - W)]) and a second quantization.
On the shipped denoiser: 2.6x the fp32 graph in onnxruntime on 2 AVX-512-VNNI cores, -0.04 to -0.07 dB.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

from aeflow.store import INT8_FILE  # noqa: E402 - light (no torch)

# An int8 graph whose mean PSNR on any check set is more than this below fp32's is not kept. (The shipped
# denoiser's best int8 graphs, 1.9-2.6x faster, lose 0.16-0.30 dB at sigma 15 on average: near-flat crops
# where fp32 reaches 40+ dB lose 1-2 dB to the activation steps, though the median crop loses under 0.1.)
MAX_LOSS_DB = 0.1
SIGMAS = (15, 25, 50)
CALIB_CROPS = 24  # 48 gave the same graph quality at twice the time


def crops(kind: str, scale: int, seed: int, n: int = 12, size: int = 128,
          photos: tuple[str, ...] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(uint8 input, clean target) pairs: noisy crops (denoise) or downscaled (upscale) of scikit-image photos.

    `photos`: the scikit-image names to cut from (default the training photos, models.data.TRAIN_PHOTOS).
    """
    from models.data import TRAIN_PHOTOS, bicubic_down, skimage_photo

    size = size * scale if kind == "upscale" else size
    photos = [a for a in (skimage_photo(p) for p in (photos or TRAIN_PHOTOS)) if min(a.shape[:2]) >= size]
    rng, out = np.random.default_rng([seed, 8]), []
    for i in range(n):
        a = photos[i % len(photos)]
        y, x = rng.integers(a.shape[0] - size + 1), rng.integers(a.shape[1] - size + 1)
        c = a[y:y + size, x:x + size]
        if kind == "denoise":
            noisy = np.clip(np.rint(c + rng.standard_normal(c.shape) * SIGMAS[i % len(SIGMAS)]), 0, 255)
            out.append((noisy.astype(np.uint8), c))
        else:
            out.append((bicubic_down(c, scale), c))
    return out


def _batches(pairs, batch: int = 4) -> list[np.ndarray]:
    xs = [x for x, _ in pairs]
    return [np.stack(xs[i:i + batch]) for i in range(0, len(xs), batch)]


def _reader(batches: list[np.ndarray]):
    """quantize_static's calibration feed: {'image': uint8 NHWC} batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": b} for b in batches])

        def get_next(self):
            return next(self.it, None)

    return Reader()


def _keep_float(model, path: Path) -> list[str]:
    """The Conv nodes of the graph at `path` that stay float: the model's `float_convs` modules, and fixed filters.

    A conv whose weight is no module parameter is a fixed filter (the upscaler's bicubic base): it stays exact.
    """
    import onnx

    keep = set(model.float_convs)
    return [n.name for n in onnx.load(str(path)).graph.node
            if n.op_type == "Conv" and (conv_module(n) in keep or not _reads_parameter(n))]


def _reads_parameter(node) -> bool:
    return node.input[1].startswith("core.model.") and node.input[1].endswith(".weight")


def _quantize(src: Path, out: Path, calib: list[np.ndarray], keep: list[str],
              steps: dict[str, tuple[float, int]] | None = None) -> dict:
    """QDQ-quantize src; `steps`: {tensor: (scale, uint8 zero point)} fixed instead of calibrated (models.qat's)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra: dict = {"CalibPercentile": 99.999}
    if steps:
        extra["TensorQuantOverrides"] = {t: [{"scale": np.array(s, np.float32), "zero_point": np.array(z, np.uint8)}]
                                         for t, (s, z) in steps.items()}
    kw = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
              weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
              op_types_to_quantize=["Conv", "Relu"], nodes_to_exclude=keep, extra_options=extra)
    root = logging.getLogger()
    level = root.level
    # the histogram calibrator prints progress; the quantizer logs a pre-processing hint on the root logger
    with contextlib.redirect_stdout(io.StringIO()):
        root.setLevel(logging.ERROR)
        try:
            quantize_static(str(src), str(out), _reader(calib), **kw)
        finally:
            root.setLevel(level)
    return {"quant_format": "QDQ", "per_channel": True, "activations": "QUInt8", "weights": "QInt8",
            "calibration": "Percentile 99.999" + (", fixed during quantization-aware fine-tuning" if steps else ""),
            "ops": ["Conv", "Relu"], "kept_float": keep}


def _bias_correct(model, src: Path, quantized: Path, calib: list[np.ndarray], out: Path) -> list[str]:
    """Write src with each quantized conv's bias lowered by the mean output change its weight rounding causes."""
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    q = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(quantized)).graph.initializer}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    from models.qat import conv_inputs

    seen = conv_inputs(model, convs, calib)
    g, done = onnx.load(str(src)), []
    init = {i.name: i for i in g.graph.initializer}
    for n, m in convs.items():
        w, b = f"core.model.{n}.weight", f"core.model.{n}.bias"
        if f"{w}_quantized" not in q or b not in init:
            continue
        wq = q[f"{w}_quantized"].astype(np.float32) * q[f"{w}_scale"].reshape(-1, 1, 1, 1)
        dw = torch.from_numpy(wq - numpy_helper.to_array(init[w]))
        with torch.inference_mode():
            shift = F.conv2d(torch.cat(seen[n]), dw, None, m.stride, m.padding, m.dilation, m.groups).mean((0, 2, 3))
        init[b].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init[b]) - shift.numpy(), b))
        done.append(n)
    onnx.save(g, str(out))
    return done


def copy_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
    """Give dst the aeflow.* metadata of src, plus `extra` (e.g. the graph's precision)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    m = onnx.load(str(dst))
    meta.update({p.key: p.value for p in m.metadata_props}, **extra)
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def psnr_check(kind: str, scale: int, fp32: Path, other: Path, seed: int = 1, label: str = "int8",
               photos: tuple[str, ...] | None = None) -> dict:
    """Mean PSNR of both graphs on training crops other than the calibration ones (another seed), or on `photos`.

    The second graph's numbers are keyed `{label}_psnr` (int8, fp16).
    """
    import onnxruntime as ort

    def run(path: Path):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda x: s.run(None, {"image": x})[0]

    def psnr(ref: np.ndarray, img: np.ndarray) -> float:
        mse = np.mean((ref.astype(np.float64) - img.astype(np.float64)) ** 2)
        return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))

    pairs = crops(kind, scale, seed, n=36, photos=photos)  # 12 per noise level: 4 crops judged 0.07 dB as 0.10
    groups = {f"sigma{s}": pairs[i::len(SIGMAS)] for i, s in enumerate(SIGMAS)} if kind == "denoise" \
        else {f"x{scale}": pairs}
    res: dict = {"crops": len(pairs), "fp32_psnr": {}, f"{label}_psnr": {}, "delta_db": {}, "median_delta_db": {},
                 "worst_delta_db": {}}
    f32, cand = run(fp32), run(other)
    for group_name, group in groups.items():
        a = np.array([psnr(c, f32(x[None])[0]) for x, c in group])
        b = np.array([psnr(c, cand(x[None])[0]) for x, c in group])
        res["fp32_psnr"][group_name] = round(float(a.mean()), 3)
        res[f"{label}_psnr"][group_name] = round(float(b.mean()), 3)
        # the mean is pulled down by near-flat crops (fp32 at 40+ dB), where int8's activation steps show most
        res["delta_db"][group_name] = round(float(b.mean() - a.mean()), 3)
        res["median_delta_db"][group_name] = round(float(np.median(b - a)), 3)
        res["worst_delta_db"][group_name] = round(float((b - a).min()), 3)
    return res


def model_from_onnx(card: dict, onnx_path: Path):
    """The torch model of a stored version that ships no checkpoint: architecture from the card, weights from ONNX."""
    import onnx
    import torch
    from onnx import numpy_helper

    from models.registry import create_model
    from models.train import TrainSettings, model_config

    s = TrainSettings(**card["settings"])
    cfg = model_config(s)
    graph = onnx.load(str(onnx_path))
    dilations = [max(a.ints) for n in graph.graph.node if n.op_type == "Conv" for a in n.attribute
                 if a.name == "dilations"]
    if s.kind == "denoise" and "max_dilation" not in cfg:
        # cards written when the "small" preset meant dilated carry no `dilation`: the graph has the truth
        cfg["max_dilation"] = max(dilations, default=1)
    model = create_model(s.kind, s.size, **cfg)
    built = [m.dilation[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if max(built, default=1) != max(dilations, default=1):
        raise ValueError(f"{onnx_path}: the card's settings build dilations up to {max(built, default=1)}, "
                         f"the graph has {max(dilations, default=1)}")
    prefix = "core.model."
    got = model.load_state_dict({i.name[len(prefix):]: torch.from_numpy(numpy_helper.to_array(i).copy())
                                 for i in graph.graph.initializer if i.name.startswith(prefix)}, strict=False)
    # an encoder's graph holds only the encoder: its decoder weights are missing by design
    if got.unexpected_keys or (s.kind in ("denoise", "upscale") and got.missing_keys):
        raise ValueError(f"{onnx_path}: weights do not fit the card's architecture (missing {got.missing_keys[:3]}, "
                         f"unexpected {got.unexpected_keys[:3]})")
    return model.eval()


def loss_db(check: dict) -> float:
    """dB lost by the second graph on its worst check set (positive: worse than fp32)."""
    return -min(check["delta_db"].values())


def conv_module(node) -> str:
    """The torch module name of an exported Conv node, from its weight's initializer ("core.model.X.weight")."""
    return node.input[1][len("core.model."):-len(".weight")]


def quant_points(fp32: Path, quantized: Path) -> list[tuple[str, str, str]]:
    """Where an int8 graph quantizes activations, as (conv module, "in" | "out", tensor) of the fp32 graph.

    A conv's own output when the conv produced the tensor (its skips then see the rounded values too), else the
    input of the conv that consumes it (a ReLU's output, a sum of skips, the padded image).
    """
    import onnx

    fp = onnx.load(str(fp32)).graph
    # fixed filters (no module weight) stay float and have no module to hook: only the learned convs count
    convs = [n for n in fp.node if n.op_type == "Conv" and _reads_parameter(n)]
    made_by = {n.output[0]: n for n in convs}
    fed = {}
    for n in convs:
        fed.setdefault(n.input[0], n)
    tensors = [n.input[0] for n in onnx.load(str(quantized)).graph.node if n.op_type == "QuantizeLinear"]
    points = []
    for t in dict.fromkeys(tensors):
        if t in made_by:
            points.append((conv_module(made_by[t]), "out", t))
        elif t in fed:
            points.append((conv_module(fed[t]), "in", t))
    return points


def _qat_int8(model, fp32: Path, out: Path, calib: list[np.ndarray], keep: list[str], settings,
              progress: bool, scale: int = 1) -> dict:
    """Write the int8 graph of a quantization-aware fine-tuned copy of `model` to out; its recipe."""
    import onnx

    from models.export import export_onnx
    from models.qat import finetune

    with tempfile.TemporaryDirectory() as tmp:
        ptq = Path(tmp) / "ptq.onnx"
        _quantize(fp32, ptq, calib, keep)
        points = quant_points(fp32, ptq)
        kept = {conv_module(n) for n in onnx.load(str(fp32)).graph.node if n.name in keep}
        student, steps, facts = finetune(model, calib, kept, points, settings, progress=progress, scale=scale)
        src = Path(tmp) / "finetuned.onnx"
        export_onnx(student, src, name="int8-source", version=0)
        names = {t for n in onnx.load(str(src)).graph.node for t in n.output}
        missing = set(steps) - names
        if missing:
            raise ValueError(f"fine-tuned tensors {sorted(missing)[:3]} not found in the exported graph")
        recipe = _quantize(src, out, calib, keep, steps)
    recipe["qat"] = facts
    return recipe


def build_int8(model, kind: str, scale: int, fp32: Path, out: Path, qat=None, progress: bool = False) -> dict:
    """Quantize fp32 (the exported model.onnx of `model`) to `out`; removed again when it loses > MAX_LOSS_DB.

    `qat` (models.qat.QatSettings): when post-training quantization loses too much, fine-tune a
    copy of the model through fake int8 and quantize that; the check still compares against `fp32`.
    """
    if kind not in ("denoise", "upscale"):
        raise ValueError(f"int8 graphs are built for denoise and upscale models, not {kind!r}")
    fp32, out = Path(fp32), Path(out)
    model = model.eval()
    calib = _batches(crops(kind, scale, seed=0, n=CALIB_CROPS))
    keep = _keep_float(model, fp32)
    with tempfile.TemporaryDirectory() as tmp:
        first, corrected = Path(tmp) / "first.onnx", Path(tmp) / "corrected.onnx"
        recipe = _quantize(fp32, first, calib, keep)
        recipe["bias_corrected"] = _bias_correct(model, fp32, first, calib, corrected)
        _quantize(corrected, out, calib, keep)
    copy_metadata(fp32, out, {"aeflow.precision": "int8"})
    check = psnr_check(kind, scale, fp32, out)
    if loss_db(check) > MAX_LOSS_DB and qat is not None and qat.steps:
        log.info("post-training int8 loses %.3f dB: quantization-aware fine-tuning (%d steps)", loss_db(check),
                 qat.steps)
        ptq = {"recipe": recipe, "check": check}
        recipe = _qat_int8(model, fp32, out, calib, keep, qat, progress, scale if kind == "upscale" else 1)
        recipe["post_training_only"] = ptq  # what the cheaper recipe gave, for the card
        copy_metadata(fp32, out, {"aeflow.precision": "int8"})
        check = psnr_check(kind, scale, fp32, out)
    loss = loss_db(check)
    facts = {"file": out.name, "recipe": recipe, "check": check, "max_loss_db": MAX_LOSS_DB,
             "kept": loss <= MAX_LOSS_DB}
    if not facts["kept"]:
        log.warning("int8 graph loses %.3f dB of mean PSNR (> %.2f): not kept", loss, MAX_LOSS_DB)
        out.unlink()
    return facts


def add_int8_to_folder(version_dir: str | Path, qat=None, progress: bool = False) -> dict:
    """Build the int8 graph of a version folder that holds model.onnx + card.json (flows.ship: shipped models).

    The card gains `int8` (recipe, PSNR check) and, when the graph is kept, its sha256 under `files`.
    `qat`: models.qat.QatSettings for a model whose post-training int8 loses too much.
    """
    import json

    from aeflow.store import CARD, MODEL_FILE

    d = Path(version_dir)
    card = json.loads((d / CARD).read_text())
    kind, scale = card["kind"], int(card["settings"].get("scale") or 1)
    facts = build_int8(model_from_onnx(card, d / MODEL_FILE), kind, scale, d / MODEL_FILE, d / INT8_FILE,
                       qat=qat, progress=progress)
    record_graph(d, "int8", INT8_FILE, facts)
    return facts


def record_graph(version_dir: Path, key: str, fname: str, facts: dict) -> None:
    """Write a derived graph's facts to the folder's card under `key`, with its sha256 when it was kept."""
    import json

    from aeflow.store import CARD, sha256_file, update_card

    d = Path(version_dir)
    files = {k: v for k, v in json.loads((d / CARD).read_text()).get("files", {}).items() if k != fname}
    if facts["kept"]:
        files[fname] = sha256_file(d / fname)
    update_card(d, {key: facts, "files": files})


def main(argv: list[str] | None = None) -> None:
    """python -m models.quantize FOLDER ... [--qat-steps N]: (re)build the int8 graph of stored versions."""
    import argparse

    from models.qat import QatSettings

    ap = argparse.ArgumentParser(prog="python -m models.quantize", description=main.__doc__)
    ap.add_argument("folders", nargs="+", help="version folders holding model.onnx and card.json")
    ap.add_argument("--qat-steps", type=int, default=0,
                    help="denoise: fine-tune this many steps through fake int8 when post-training int8 loses "
                         f"more than {MAX_LOSS_DB} dB (the shipped denoiser: 300, ~4 min on 2 cores)")
    args = ap.parse_args(argv)
    qat = QatSettings(steps=args.qat_steps) if args.qat_steps else None
    for folder in args.folders:
        f = add_int8_to_folder(folder, qat=qat, progress=True)
        print(folder, "kept" if f["kept"] else "not kept", f["check"]["delta_db"], f["check"]["median_delta_db"])


if __name__ == "__main__":
    main()
