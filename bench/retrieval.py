"""Copy detection on held-out photos: aeflow's embed job against perceptual hashes, a histogram, PCA and fastdup.

    python -m models.photos fetch PHOTOS                       # once: the Debian photos (PHOTOS/heldout is used)
    python bench/retrieval.py --photos PHOTOS/heldout --out bench/results/retrieval.json [--fastdup]

Each held-out photo is cut into distinct images (a 2×2 grid of crops plus the whole photo, so look-alike
originals compete), and each original gets one copy per edit: downscale, JPEG at low quality, crop,
brightness/contrast, grey, noise, rotation, mirror, letterbox, and a combination of two. Every method embeds
or hashes the same files; a copy is a query, the originals are the gallery. Reported per method: recall@1 per
edit and overall, mAP (one relevant original per query), recall at 90% precision with one global threshold
over all query×original pairs, and images/s on the same cores (aeflow: the `aeflow embed` job's own rate).
fastdup (numpy<2, Pillow 10) runs in a venv of its own that `--fastdup` creates on first use.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EDITS = ("downscale", "jpeg", "crop", "tone", "grey", "noise", "rotate", "mirror", "letterbox", "combined")
FASTDUP_VENV = Path(tempfile.gettempdir()) / "aeflow-fastdup-venv"
FASTDUP_PINS = ("fastdup",)


def build_set(photos: Path, work: Path, seed: int = 0) -> tuple[list[str], list[tuple[str, int, str]]]:
    """Write originals and copies under work/set; (original names, [(copy name, original index, edit)])."""
    from PIL import Image

    from models.views import apply_edit

    rng = np.random.default_rng(seed)
    d = work / "set"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    originals, copies = [], []
    for p in sorted(photos.rglob("*.png")):
        a = np.asarray(Image.open(p).convert("RGB"))
        h, w = a.shape[:2]
        pieces = [a] + [a[y:y + h // 2, x:x + w // 2] for y in (0, h // 2) for x in (0, w // 2)]
        for piece in pieces:
            k = len(originals)
            name = f"o{k:05d}.jpg"
            Image.fromarray(piece).save(d / name, quality=92)
            originals.append(name)
            for edit in EDITS:
                if edit == "combined":
                    two = rng.choice(EDITS[:-1], 2, replace=False)
                    b = apply_edit(apply_edit(piece, str(two[0]), rng), str(two[1]), rng)
                else:
                    b = apply_edit(piece, edit, rng)
                cname = f"c{k:05d}-{edit}.jpg"
                Image.fromarray(b).save(d / cname, quality=92)
                copies.append((cname, k, edit))
    return originals, copies


def scores(sim: np.ndarray, copies: list[tuple[str, int, str]]) -> dict:
    """Recall@1 (overall and per edit), mAP and recall at 90% precision from a copies × originals similarity."""
    from models.evaluate import recall_at_precision

    truth = np.array([c[1] for c in copies])
    true_sim = sim[np.arange(len(copies)), truth]
    rank = (sim > true_sim[:, None]).sum(1)  # originals scored above the true one
    hit = rank == 0
    per_edit = {e: float(hit[[c[2] == e for c in copies]].mean()) for e in EDITS}
    # one global threshold over every (copy, original) pair: the best recall whose precision stays >= 0.9
    recall90, thr = recall_at_precision(sim, truth, 0.9)  # the photo-ae card's own metric, same code
    return {"recall_at_1": float(hit.mean()), "map": float(np.mean(1.0 / (rank + 1))), "recall_at_p90": recall90,
            "threshold_at_p90": thr, "per_edit_recall_at_1": per_edit}


def run_aeflow(d: Path, work: Path, model: str, store: str | None, originals, copies) -> dict:
    """`aeflow embed` + the vectors it wrote: cosine similarity of copies to originals."""
    from pipeline.embeddings import read_embeddings, vectors_of

    out = work / "aeflow-out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "aeflow.cli", "embed", str(d), str(out), "--model", model, "--runner", "local",
           "--no-progress", *(["--store", store] if store else [])]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    summary = json.loads((out / "_aeflow" / "summary.json").read_text())
    t = read_embeddings(out, columns=["path", "vector"])
    v = dict(zip(t.column("path").to_pylist(), vectors_of(t)))
    o = np.stack([v[n] for n in originals])
    c = np.stack([v[n] for n, _, _ in copies])
    o /= np.linalg.norm(o, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return {"sim": c @ o.T, "images_per_s": summary["images_per_s"], "model": summary["model"]["name"] + ":" +
            str(summary["model"]["version"]), "command": " ".join(cmd[2:])}


def run_hashes(d: Path, originals, copies) -> dict:
    """pHash, dHash, wHash (imagehash): similarity = 1 - Hamming distance / bits."""
    import imagehash
    from PIL import Image

    out = {}
    for name, fn in (("phash", imagehash.phash), ("dhash", imagehash.dhash), ("whash", imagehash.whash)):
        t0 = time.perf_counter()
        bits = {}
        for n in originals + [c[0] for c in copies]:
            with Image.open(d / n) as im:
                bits[n] = fn(im).hash.ravel()
        rate = (len(originals) + len(copies)) / (time.perf_counter() - t0)
        o = np.stack([bits[n] for n in originals]).astype(np.float32)
        c = np.stack([bits[n[0]] for n in copies]).astype(np.float32)
        ham = c @ (1 - o).T + (1 - c) @ o.T
        out[name] = {"sim": 1 - ham / o.shape[1], "images_per_s": round(rate, 1)}
    return out


def run_histogram_and_pca(d: Path, originals, copies) -> dict:
    """An HSV colour histogram (cosine) and PCA of 32×32 grey thumbnails fitted on the originals (cosine)."""
    from PIL import Image
    from sklearn.decomposition import PCA

    names = originals + [c[0] for c in copies]
    t0 = time.perf_counter()
    hist, thumbs = {}, {}
    for n in names:
        with Image.open(d / n) as im:
            hsv = np.asarray(im.convert("RGB").resize((64, 64)).convert("HSV"))
            h, _ = np.histogramdd(hsv.reshape(-1, 3), bins=(8, 4, 4), range=((0, 256),) * 3)
            hist[n] = np.sqrt(h.ravel())
            thumbs[n] = np.asarray(im.convert("L").resize((32, 32)), np.float32).ravel() / 255.0
    rate = len(names) / (time.perf_counter() - t0)

    def cos(f):
        o = np.stack([f[n] for n in originals])
        c = np.stack([f[n[0]] for n in copies])
        o = o / np.maximum(np.linalg.norm(o, axis=1, keepdims=True), 1e-9)
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-9)
        return c @ o.T

    pca = PCA(n_components=min(64, len(originals) - 1), random_state=0).fit(np.stack([thumbs[n] for n in originals]))
    proj = {n: pca.transform(thumbs[n][None])[0] for n in names}
    return {"colour_histogram": {"sim": cos(hist), "images_per_s": round(rate, 1)},
            "pca_thumbnails": {"sim": cos(proj), "images_per_s": round(rate, 1)}}


_FASTDUP_SCRIPT = r"""
import json, sys, time, numpy as np, fastdup
d, work, out, cores = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
fastdup.run(input_dir=d, work_dir=work, threshold=0.0, nearest_neighbors_k=2, num_threads=cores)
secs = time.perf_counter() - t0
names, feats = fastdup.load_binary_feature(work + "/atrain_features.dat", d=576)
np.save(out + "/feats.npy", np.asarray(feats, np.float32))
json.dump({"names": [n.split("/")[-1] for n in names], "seconds": secs}, open(out + "/meta.json", "w"))
"""
# (fastdup's native code silences the process's stdout after run(): results go through files)


def run_fastdup(d: Path, work: Path, originals, copies, cores: int) -> dict:
    """fastdup's own CNN features (its venv), cosine similarity; images/s of its whole run."""
    py = Path(os.environ.get("AEFLOW_FASTDUP_PYTHON", FASTDUP_VENV / "bin" / "python"))
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(FASTDUP_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *FASTDUP_PINS], check=True)
    fw, fo = work / "fastdup-work", work / "fastdup-out"
    for p in (fw, fo):
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
    script = work / "fastdup_run.py"
    script.write_text(_FASTDUP_SCRIPT)
    r = subprocess.run([str(py), str(script), str(d), str(fw), str(fo), str(cores)], capture_output=True, text=True)
    if r.returncode != 0 or not (fo / "meta.json").is_file():
        raise RuntimeError((r.stderr or r.stdout)[-2000:])
    meta = json.loads((fo / "meta.json").read_text())
    feats = np.load(fo / "feats.npy")
    v = dict(zip(meta["names"], feats))
    o = np.stack([v[n] for n in originals])
    c = np.stack([v[n[0]] for n in copies])
    o /= np.linalg.norm(o, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return {"sim": c @ o.T, "images_per_s": round(len(v) / meta["seconds"], 1)}


def main(argv: list[str] | None = None) -> int:
    """CLI entry."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, required=True, help="held-out photos (models.photos' DIR/heldout)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="photo-ae,ae", help="aeflow model specs to compare (default photo-ae,ae)")
    ap.add_argument("--store", default=None)
    ap.add_argument("--fastdup", action="store_true", help="also run fastdup (creates its venv on first use)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "aeflow-retrieval")
    ap.add_argument("--limit", type=int, default=None, help="use the first N photos only (smoke runs)")
    args = ap.parse_args(argv)
    photos = args.photos
    if args.limit:
        sub = args.work / "photos"
        shutil.rmtree(sub, ignore_errors=True)
        sub.mkdir(parents=True)
        for p in sorted(photos.rglob("*.png"))[:args.limit]:
            shutil.copy(p, sub / p.name)
        photos = sub
    t0 = time.time()
    originals, copies = build_set(photos, args.work)
    d = args.work / "set"
    methods: dict = {}
    for spec in [m.strip() for m in args.models.split(",") if m.strip()]:
        methods[f"aeflow {spec}"] = run_aeflow(d, args.work, spec, args.store, originals, copies)
    methods.update(run_hashes(d, originals, copies))
    methods.update(run_histogram_and_pca(d, originals, copies))
    if args.fastdup:
        try:
            methods["fastdup"] = run_fastdup(d, args.work, originals, copies, os.cpu_count() or 1)
        except Exception as exc:  # noqa: BLE001 - report it, keep the other numbers
            methods["fastdup"] = {"error": str(exc)[-2000:]}
    results = {}
    for name, m in methods.items():
        if "sim" in m:
            results[name] = {**scores(m.pop("sim"), copies), **m}
        else:
            results[name] = m
        r = results[name]
        if "recall_at_1" in r:
            print(f"{name:>22}: R@1 {r['recall_at_1']:.3f}  mAP {r['map']:.3f}  R@P90 {r['recall_at_p90']:.3f}  "
                  f"{r.get('images_per_s')} img/s", flush=True)
    doc = {"command": " ".join(["bench/retrieval.py", *(argv if argv is not None else sys.argv[1:])]),
           "machine": f"{platform.machine()} {os.cpu_count()} cores", "photos": str(args.photos),
           "originals": len(originals), "copies": len(copies), "edits": list(EDITS), "results": results,
           "seconds": round(time.time() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
