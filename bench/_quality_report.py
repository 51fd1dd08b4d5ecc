"""bench/quality.py's outputs besides the JSON: markdown tables (one per task) and before/after comparison strips."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

PANEL = 128  # comparison crops: PANEL x PANEL pixels, side by side
LABEL_H = 18


def _n(v, digits: int = 2, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _db(v) -> str:
    return "–" if v is None else f"**{_n(v, signed=True)} dB**"


def _spmp(m: dict) -> str:
    """s/MP cell: the call itself, or for models the whole CLI process (job after start-up in brackets)."""
    if m.get("s_per_mp") is None:
        return "–"
    if "s_per_mp_job" in m:
        return f"{_n(m['s_per_mp'])} ({_n(m['s_per_mp_job'])})"
    return _n(m["s_per_mp"], 3)


def _model_label(m: dict, spec_default: str) -> str:
    if m.get("status") == "ok":
        return f"model `{m['id']}`"
    what = "missing" if m.get("status") == "missing" else "failed"
    return f"model `{m.get('spec', spec_default)}`: **{what}**"


def _graph(m: dict) -> str:
    """", int8 graph" etc.: which of the version's graphs the job ran."""
    p = (m.get("cli") or {}).get("precision")
    return f", {p} graph" if p else ""


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(r: dict) -> str:
    """The report as markdown: a header, then one table per task that ran, with the gains spelled out."""
    m, ph = r["machine"], r["photos"]
    lines = [f"Date {r['date']}; {m.get('nproc')} CPUs ({m.get('cpu')}); runner `{r['config']['runner']}`; "
             f"{ph['count']} photos from `{ph['dir']}` ({_n(ph['megapixels'], 3)} MP); bench {r['bench_seconds']} s.",
             "", "Models (resolved in the store, then aeflow's shipped models):", ""]
    rows = []
    for role, mod in r["models"].items():
        if mod.get("status") == "ok":
            rows.append([role, f"`{mod['id']}`", f"`{mod['sha256'][:12]}…`", mod.get("trained_on") or "–"])
        else:
            rows.append([role, f"`{mod['spec']}`", "**missing**", mod.get("error") or "–"])
    lines += _table(["role", "model", "sha256", "trained on"], rows)
    if "denoise" in r:
        lines += ["", "### Denoising (PSNR/SSIM on RGB, mean over the photos)", ""]
        rows = []
        for sigma, e in r["denoise"].items():
            ms = e["methods"]
            rows.append([sigma, "noisy input", _n(ms["noisy"]["psnr"]), _n(ms["noisy"]["ssim"], 4), "–"])
            rows.append([sigma, f"OpenCV NLM (h={_n(e['nlm_best_h'], 1)}, oracle)", _n(ms["nlm"]["psnr"]),
                         _n(ms["nlm"]["ssim"], 4), _spmp(ms["nlm"])])
            if "tv" in ms:
                rows.append([sigma, f"TV Chambolle (weight={_n(e['tv_best_weight'], 3)}, oracle)",
                             _n(ms["tv"]["psnr"]), _n(ms["tv"]["ssim"], 4), _spmp(ms["tv"])])
            rows.append([sigma, "wavelet (BayesShrink, true σ)", _n(ms["wavelet"]["psnr"]),
                         _n(ms["wavelet"]["ssim"], 4), _spmp(ms["wavelet"])])
            if "bm3d" in ms:
                b = ms["bm3d"]
                rows.append([sigma, "CBM3D (true σ)" if "psnr" in b else "CBM3D: **not installed**",
                             _n(b.get("psnr")), _n(b.get("ssim"), 4), _spmp(b) if "psnr" in b else "–"])
            for key, pm in ms.items():
                if key.startswith("previous:"):
                    rows.append([sigma, "previous " + _model_label(pm, key[9:]), _n(pm.get("psnr")),
                                 _n(pm.get("ssim"), 4), _spmp(pm)])
            mm = ms["model"]
            rows.append([sigma, _model_label(mm, "denoise") + _graph(mm), _n(mm.get("psnr")), _n(mm.get("ssim"), 4),
                         _spmp(mm)])
            if "model_fp32" in ms:
                f = ms["model_fp32"]
                rows.append([sigma, _model_label(f, "denoise") + _graph(f), _n(f.get("psnr")), _n(f.get("ssim"), 4),
                             _spmp(f)])
            if "model_minus_best_classic_db" in e:
                rows.append([sigma, f"**model − best of NLM, TV, wavelet** ({e['best_classic']})",
                             _db(e.get("model_minus_best_classic_db")), "", ""])
            else:
                rows.append([sigma, "**model − best NLM**", _db(e.get("model_minus_best_nlm_db")),
                             _n(e.get("model_minus_best_nlm_ssim"), 4, signed=True), ""])
            if "model_minus_bm3d_db" in e:
                rows.append([sigma, "**model − CBM3D**", _db(e["model_minus_bm3d_db"]),
                             _n(e.get("model_minus_bm3d_ssim"), 4, signed=True), ""])
        lines += _table(["σ", "method", "PSNR dB", "SSIM", "s/MP"], rows)
    if "upscale" in r:
        lines += ["", "### Upscaling (PSNR/SSIM on BT.601 Y, `scale` pixels cropped at every border)", ""]
        rows = []
        for s, e in r["upscale"].items():
            ms = e["methods"]
            for key, label in (("bicubic", "bicubic (Pillow)"), ("lanczos", "Lanczos (Pillow)")):
                rows.append([f"x{s}", label, _n(ms[key]["psnr_y"]), _n(ms[key]["ssim_y"], 4), _spmp(ms[key])])
            for key, pm in ms.items():
                if key.startswith("previous:"):
                    rows.append([f"x{s}", "previous " + _model_label(pm, key[9:]), _n(pm.get("psnr_y")),
                                 _n(pm.get("ssim_y"), 4), _spmp(pm)])
            mm = ms["model"]
            rows.append([f"x{s}", _model_label(mm, f"upscale-x{s}") + _graph(mm), _n(mm.get("psnr_y")),
                         _n(mm.get("ssim_y"), 4), _spmp(mm)])
            if "model_fp32" in ms:
                f = ms["model_fp32"]
                rows.append([f"x{s}", _model_label(f, f"upscale-x{s}") + _graph(f), _n(f.get("psnr_y")),
                             _n(f.get("ssim_y"), 4), _spmp(f)])
            rows.append([f"x{s}", "**model − bicubic**", _db(e.get("model_minus_bicubic_db")),
                         _n(e.get("model_minus_bicubic_ssim"), 4, signed=True), ""])
        lines += _table(["scale", "method", "Y-PSNR dB", "Y-SSIM", "s/MP (output)"], rows)
    if r.get("speed"):
        lines += ["", "### Speed on one large photo (the job's own time after its start-up)", ""]
        rows = [[k, f"`{v['id']}`" if "id" in v else f"`{v['spec']}`: **missing**",
                 "x".join(str(d) for d in reversed(v.get("input", []))) or "–", _n(v.get("output_megapixels"), 2),
                 _n(v.get("s_per_mp_job"), 3), _n(v.get("s_per_mp_process"), 3)] for k, v in r["speed"].items()]
        lines += _table(["job", "model", "input", "output MP", "s/MP (job)", "s/MP (process)"], rows)
    if "embed" in r:
        lines += ["", "### Embeddings (5-NN accuracy, 5-fold stratified CV; precision@10, Euclidean)", ""]
        rows = []
        for name, e in r["embed"].items():
            ms = e["methods"]
            label = {"mnist": "mnist (ae val split)", "digits": "digits (all)"}.get(name, name)
            a = ms["ae"]
            rows.append([f"{label}, n={e['n']}", _model_label(a, "ae"), str(a.get("dim", "–")),
                         _n(a.get("knn_acc"), 3), _n(a.get("p_at_10"), 3), _spmp(a)])
            rows.append(["", "PCA (fit on MNIST train)", str(ms["pca"]["dim"]), _n(ms["pca"]["knn_acc"], 3),
                         _n(ms["pca"]["p_at_10"], 3), _spmp(ms["pca"])])
            if "pca_l2" in ms:
                rows.append(["", "PCA, L2-normalised (as the ae)", str(ms["pca_l2"]["dim"]),
                             _n(ms["pca_l2"]["knn_acc"], 3), _n(ms["pca_l2"]["p_at_10"], 3), "–"])
            rows.append(["", "raw pixels (reference)", str(ms["pixels"]["dim"]), _n(ms["pixels"]["knn_acc"], 3),
                         _n(ms["pixels"]["p_at_10"], 3), "–"])
            g = e.get("ae_minus_pca") or {}
            rows.append(["", "**ae − best PCA**", "", f"**{_n(g.get('knn_acc'), 3, signed=True)}**",
                         f"**{_n(g.get('p_at_10'), 3, signed=True)}**", ""])
        lines += _table(["dataset", "method", "dim", "kNN acc", "P@10", "s/MP"], rows)
    lines += ["", "Notes:", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def _label(img: np.ndarray, text: str):
    """A panel with its label in a white band above it."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (img.shape[1], img.shape[0] + LABEL_H), "white")
    canvas.paste(Image.fromarray(img), (0, LABEL_H))
    ImageDraw.Draw(canvas).text((3, 3), text, fill="black")
    return canvas


def strip(panels: list[tuple[str, np.ndarray | None]], path: Path) -> Path:
    """Centre PANEL² crops of same-sized images side by side, labelled; a missing one is a grey panel."""
    from PIL import Image

    ref = next(a for _, a in panels if a is not None)
    h, w = ref.shape[:2]
    y, x = max(0, (h - PANEL) // 2), max(0, (w - PANEL) // 2)
    tiles = []
    for text, a in panels:
        crop = (np.full((min(PANEL, h), min(PANEL, w), 3), 128, np.uint8) if a is None
                else np.ascontiguousarray(a[y:y + PANEL, x:x + PANEL]))
        tiles.append(_label(crop, text if a is not None else f"{text}: missing"))
    out = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height), "white")
    for i, t in enumerate(tiles):
        out.paste(t, (sum(u.width for u in tiles[:i]), 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, optimize=True)
    return path


def pictures(folder: Path, denoise_pics: dict, upscale_pics: dict) -> list[str]:
    """The comparison strips: one photo at σ=25 (or the middle σ) and at the largest scale (and x2)."""
    written = []
    if denoise_pics:
        sigmas = sorted(denoise_pics)
        sigma = 25 if 25 in denoise_pics else sigmas[len(sigmas) // 2]
        p = denoise_pics[sigma]
        prev = [("previous", v) for k, v in p.items() if k.startswith("previous:")]
        extra = [("CBM3D", p["bm3d"])] if "bm3d" in p else []
        written.append(strip([(f"noisy, sigma {sigma}", p["noisy"]), ("NLM", p["nlm"]), ("wavelet", p["wavelet"]),
                              *extra, *prev, ("model", p.get("model")), ("clean", p["clean"])],
                             Path(folder) / f"denoise-sigma{sigma}.png"))  # labels in ASCII: Pillow's default font
    for s, p in sorted(upscale_pics.items()):
        prev = [("previous", v) for k, v in p.items() if k.startswith("previous:")]
        written.append(strip([(f"bicubic x{s}", p["bicubic"]), ("Lanczos", p["lanczos"]), *prev,
                              ("model", p.get("model")), ("HR", p["hr"])], Path(folder) / f"upscale-x{s}.png"))
    return [str(w) for w in written]
