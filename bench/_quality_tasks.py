"""The three evaluations of bench/quality.py: denoise and upscale against classic baselines, embeddings against PCA.

Models always run through the real `aeflow denoise|upscale|embed` command (a subprocess), as users run them.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench import _quality_metrics as qm
from bench._quality_data import digit_sets, read_digits, save_png, write_digits

# h = sigma * factor, the grid NLM's h is picked from. OpenCV's colour NLM filters Lab's L with h, where noise
# that is independent per RGB channel is weaker than sigma: its best h sits near 0.6-0.7 sigma on these photos.
NLM_FACTORS = (0.5, 0.6, 0.7, 0.8, 1.0)
# weight = sigma/255 * factor, the grid scikit-image's Chambolle TV weight is picked from (oracle, as NLM's h)
TV_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
SCALES = (2, 4)
PICTURE_PHOTO = "camera-0.png"
CLI_TIMEOUT_S = 3600


def run_cli(job: str, in_dir: Path, out_dir: Path, model: dict, store: Path, runner: str,
            precision: str | None = None) -> dict:
    """`aeflow JOB IN OUT --model M --store S --runner R --no-progress [--precision P]` in a subprocess; its
    timings and summary."""
    from bench._modes import aeflow_exe

    cmd = [*aeflow_exe(), job, str(in_dir), str(out_dir), "--model", model["spec"], "--store", str(store),
           "--runner", runner, "--no-progress"] + (["--precision", precision] if precision else [])
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray for --runner ray, as `aeflow` starts by default
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT_S)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {p.returncode}: {(p.stderr or p.stdout)[-2000:]}")
    s = json.loads((out_dir / "_aeflow" / "summary.json").read_text())
    return {"command": " ".join(cmd), "process_s": round(wall, 3), "job_wall_s": s["wall_s"],
            "job_startup_s": s.get("startup_s"), "device": s.get("device"), "providers": s.get("providers"),
            "model": f"{s['model']['name']}:{s['model']['version']}", "ok": s["counts"]["ok"],
            "precision": s.get("precision"),
            "printed": p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _method(per_image: dict[str, dict], seconds: float | None, mp: float, **extra) -> dict:
    """A method's entry: means over the photos, s/MP, per-image values."""
    keys = next(iter(per_image.values())).keys() if per_image else ()
    out = {k: _mean([v[k] for v in per_image.values()]) for k in keys}
    out["s_per_mp"] = None if seconds is None else seconds / mp
    return {**out, **extra, "per_image": per_image}


def _cli_method(per_image: dict, cli: dict, mp: float) -> dict:
    """The model's entry: s/MP of the whole CLI process and of the job's own run after its start-up."""
    running = cli["job_wall_s"] - (cli["job_startup_s"] or 0.0)
    return _method(per_image, cli["process_s"], mp, s_per_mp_job=running / mp, cli=cli)


def _picture_name(names: list[str]) -> str:
    """The photo of the comparison pictures: the cameraman of the held-out folder when present, else the first."""
    return PICTURE_PHOTO if PICTURE_PHOTO in names else names[0]


def _png_name(rel: str) -> str:
    return str(Path(rel).with_suffix(".png").as_posix())


def _write_inputs(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    for rel, a in arrays.items():
        save_png(folder / rel, a)


def _read_outputs(folder: Path, names: list[str], shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    from aeflow.imageio import load_image

    out = {}
    for n in names:
        a = load_image(folder / n, channels=3)
        if a.shape != shapes[n]:
            raise RuntimeError(f"model output {folder / n} is {a.shape}, expected {shapes[n]}")
        out[n] = a
    return out


def _rgb_scores(ref: np.ndarray, img: np.ndarray) -> dict:
    return {"psnr": qm.psnr(ref, img), "ssim": qm.ssim_rgb(ref, img)}


# a folder where classic methods keep their outputs and times, keyed by method and input bytes, so a rerun on the
# same photos (a new model) does not redo CBM3D's minutes; unset, nothing is kept
CACHE_ENV = "AEFLOW_BENCH_CACHE"


def _classic(names: list[str], inputs: dict, fn, score, label: str = "") -> tuple[dict, dict, float]:
    """(per-image scores, outputs, seconds) of a classic method `fn(uint8 image) -> uint8 image` over the photos."""
    import hashlib

    cache = Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) and label else None
    per, imgs, secs = {}, {}, 0.0
    for n in names:
        key = hashlib.sha256(label.encode() + inputs[n].tobytes() + str(inputs[n].shape).encode()).hexdigest()[:24]
        hit = cache / f"{key}.npz" if cache else None
        if hit is not None and hit.is_file():
            with np.load(hit) as z:
                imgs[n], took = z["out"], float(z["seconds"])
        else:
            t0 = time.perf_counter()
            imgs[n] = fn(inputs[n])
            took = time.perf_counter() - t0
            if hit is not None:
                hit.parent.mkdir(parents=True, exist_ok=True)
                np.savez(hit, out=imgs[n], seconds=took)
        secs += took
        per[n] = score(n, imgs[n])
    return per, imgs, secs


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def _oracle(grid: dict, mp: float) -> tuple[float, dict, dict]:
    """(best parameter, its method entry with the whole grid, its outputs) of {param: (per, imgs, secs)}."""
    scored = {k: (_method(per, secs, mp, param=k), imgs) for k, (per, imgs, secs) in grid.items()}
    best = max(scored, key=lambda k: scored[k][0]["psnr"])
    entry = {**scored[best][0], "grid": {str(k): {f: v for f, v in m.items() if f != "per_image"}
                                         for k, (m, _) in scored.items()},
             "best_at_grid_edge": best in (min(grid), max(grid))}
    return best, entry, scored[best][1]


def bm3d_available() -> bool:
    """Whether the `bm3d` package (CBM3D, the reference classic denoiser) is installed."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def denoise(photos: list[tuple[str, np.ndarray]], sigmas: tuple[int, ...], model: dict, store: Path, runner: str,
            work: Path, seed: int, say: Callable[[str], None], previous: tuple[dict, ...] = (),
            fp32_too: bool = False) -> tuple[dict, dict]:
    """Per sigma: noisy input, NLM and TV (best of a grid), wavelet and CBM3D (true σ), the model and `previous`
    models; (results, arrays of the picture photo)."""
    import cv2
    from skimage.restoration import denoise_tv_chambolle, denoise_wavelet

    clean = {_png_name(n): a for n, a in photos}
    names = sorted(clean)
    mp = sum(a.shape[0] * a.shape[1] for a in clean.values()) / 1e6
    results, picture = {}, {}

    def score(n, a):
        return _rgb_scores(clean[n], a)

    for sigma in sigmas:
        rng = np.random.default_rng([seed, sigma])
        noisy = {}
        for n in names:  # zero-mean Gaussian on 0..255, clipped and rounded: what a real noisy file holds
            x = clean[n].astype(np.float64) + rng.standard_normal(clean[n].shape) * sigma
            noisy[n] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        in_dir = work / f"denoise-{sigma}" / "noisy"
        _write_inputs(in_dir, noisy)
        methods = {"noisy": _method({n: score(n, noisy[n]) for n in names}, None, mp)}
        outs = {"noisy": noisy}

        say(f"denoise σ={sigma}: NLM grid")
        grid = {}
        for f in NLM_FACTORS:
            h = round(sigma * f, 2)
            grid[h] = _classic(names, noisy, lambda a, h=h: np.ascontiguousarray(cv2.fastNlMeansDenoisingColored(
                np.ascontiguousarray(a[..., ::-1]), None, h, h, 7, 21)[..., ::-1]), score, f"nlm-{h}")
        # oracle choice, favourable to NLM: the h with the best mean PSNR on these very photos
        best_h, methods["nlm"], outs["nlm"] = _oracle(grid, mp)

        say(f"denoise σ={sigma}: TV grid")
        grid = {}
        for f in TV_FACTORS:
            w = round(sigma / 255.0 * f, 4)
            grid[w] = _classic(names, noisy, lambda a, w=w: _to_u8(denoise_tv_chambolle(
                a.astype(np.float64) / 255.0, weight=w, channel_axis=-1)), score, f"tv-{w}")
        best_w, methods["tv"], outs["tv"] = _oracle(grid, mp)

        say(f"denoise σ={sigma}: wavelet")
        per, outs["wavelet"], secs = _classic(names, noisy, lambda a, sigma=sigma: _to_u8(denoise_wavelet(
            a.astype(np.float64) / 255.0, sigma=sigma / 255.0, channel_axis=-1, convert2ycbcr=True,
            method="BayesShrink", mode="soft", rescale_sigma=True)), score, f"wavelet-{sigma}")
        methods["wavelet"] = _method(per, secs, mp)

        if bm3d_available():
            import bm3d

            say(f"denoise σ={sigma}: CBM3D ({len(names)} photos, slow)")
            per, outs["bm3d"], secs = _classic(names, noisy, lambda a, sigma=sigma: _to_u8(bm3d.bm3d_rgb(
                a.astype(np.float64) / 255.0, sigma / 255.0)), score, f"bm3d-{sigma}")
            methods["bm3d"] = _method(per, secs, mp)
        else:
            methods["bm3d"] = {"status": "missing", "error": "pip install bm3d"}

        shapes = {n: a.shape for n, a in clean.items()}
        for k, m in enumerate(previous):
            key = f"previous:{m.get('id', m['spec'])}"
            got: dict = {}
            methods[key] = _model_method("denoise", m, in_dir, work / f"denoise-{sigma}" / f"prev{k}", names,
                                         shapes, store, runner, mp, say, score, got, f"σ={sigma} (previous)")
            if "model" in got:
                outs[key] = got["model"]
        methods["model"] = _model_method("denoise", model, in_dir, work / f"denoise-{sigma}" / "out", names,
                                         shapes, store, runner, mp, say, score, outs, f"σ={sigma}")
        if fp32_too:  # the default graph on CPU is int8 where one ships: its fp32 graph beside it
            methods["model_fp32"] = _model_method("denoise", model, in_dir, work / f"denoise-{sigma}" / "fp32", names,
                                                  shapes, store, runner, mp, say, score, {}, f"σ={sigma}", "fp32")
        classic = max(("nlm", "tv", "wavelet"), key=lambda k: methods[k]["psnr"])
        entry = {"methods": methods, "nlm_best_h": best_h, "nlm_best_at_grid_edge": methods["nlm"]["best_at_grid_edge"],
                 "tv_best_weight": best_w, "best_classic": classic, "megapixels": mp}
        if "psnr" in methods["model"]:
            entry["model_minus_best_nlm_db"] = methods["model"]["psnr"] - methods["nlm"]["psnr"]
            entry["model_minus_best_nlm_ssim"] = methods["model"]["ssim"] - methods["nlm"]["ssim"]
            entry["model_minus_best_classic_db"] = methods["model"]["psnr"] - methods[classic]["psnr"]
            if "psnr" in methods["bm3d"]:
                entry["model_minus_bm3d_db"] = methods["model"]["psnr"] - methods["bm3d"]["psnr"]
                entry["model_minus_bm3d_ssim"] = methods["model"]["ssim"] - methods["bm3d"]["ssim"]
        results[str(sigma)] = entry
        pic = _picture_name(names)
        picture[sigma] = {k: v[pic] for k, v in outs.items()} | {"clean": clean[pic], "name": pic}
    return results, picture


def _model_method(job: str, model: dict, in_dir: Path, out_dir: Path, names: list[str], shapes: dict,
                  store: Path, runner: str, mp: float, say, score, outs: dict, label: str,
                  precision: str | None = None) -> dict:
    """Run the model through the CLI and score its outputs; a missing model or a failed job is recorded, not raised."""
    if model.get("status") != "ok":
        return {"status": "missing", "spec": model["spec"], "error": model.get("error")}
    say(f"{job} {label}: model {model['id']} via `aeflow {job}`" + (f" --precision {precision}" if precision else ""))
    try:
        cli = run_cli(job, in_dir, out_dir, model, store, runner, precision)
        got = _read_outputs(out_dir, names, shapes)
    except (RuntimeError, OSError, ValueError) as exc:
        say(f"  failed: {exc}")
        return {"status": "error", "spec": model["spec"], "error": str(exc)}
    outs["model"] = got
    return {"status": "ok", "id": model["id"], **_cli_method({n: score(n, got[n]) for n in names}, cli, mp)}


def upscale(photos: list[tuple[str, np.ndarray]], models: dict[int, dict], store: Path, runner: str, work: Path,
            say: Callable[[str], None], previous: dict[int, list[dict]] | None = None,
            fp32_too: bool = False) -> tuple[dict, dict]:
    """Per scale: bicubic, Lanczos, the model and `previous` models (by scale) from bicubic-downscaled inputs;
    Y-PSNR/SSIM with `scale` pixels cropped."""
    from PIL import Image

    from models.data import bicubic_down

    results, picture = {}, {}
    for s in SCALES:
        hr = {}
        for n, a in photos:  # the HR reference: cropped to a multiple of the scale, so LR x s is the same size
            hr[_png_name(n)] = np.ascontiguousarray(a[:a.shape[0] // s * s, :a.shape[1] // s * s])
        names = sorted(hr)
        lr = {n: bicubic_down(hr[n], s) for n in names}
        in_dir = work / f"upscale-x{s}" / "lr"
        _write_inputs(in_dir, lr)
        mp = sum(a.shape[0] * a.shape[1] for a in hr.values()) / 1e6  # output megapixels

        def score(n, img, hr=hr, s=s):
            return {"psnr_y": qm.psnr_y(hr[n], img, s), "ssim_y": qm.ssim_y(hr[n], img, s)}

        methods, outs = {}, {}
        for key, flt in (("bicubic", Image.BICUBIC), ("lanczos", Image.LANCZOS)):
            say(f"upscale x{s}: {key}")
            per, secs, imgs = {}, 0.0, {}
            for n in names:
                t0 = time.perf_counter()
                im = Image.fromarray(lr[n]).resize((hr[n].shape[1], hr[n].shape[0]), flt)
                imgs[n] = np.asarray(im)
                secs += time.perf_counter() - t0
                per[n] = score(n, imgs[n])
            methods[key], outs[key] = _method(per, secs, mp), imgs
        for k, m in enumerate((previous or {}).get(s, [])):
            key, got = f"previous:{m.get('id', m['spec'])}", {}
            methods[key] = _model_method("upscale", m, in_dir, work / f"upscale-x{s}" / f"prev{k}", names,
                                         {n: a.shape for n, a in hr.items()}, store, runner, mp, say, score, got,
                                         f"x{s} (previous)")
            if "model" in got:
                outs[key] = got["model"]
        model = models.get(s, {"status": "missing", "spec": f"upscale-x{s}", "error": f"no x{s} model given"})
        methods["model"] = _model_method("upscale", model, in_dir, work / f"upscale-x{s}" / "out", names,
                                         {n: a.shape for n, a in hr.items()}, store, runner, mp, say, score, outs,
                                         f"x{s}")
        if fp32_too:
            methods["model_fp32"] = _model_method("upscale", model, in_dir, work / f"upscale-x{s}" / "fp32", names,
                                                  {n: a.shape for n, a in hr.items()}, store, runner, mp, say, score,
                                                  {}, f"x{s}", "fp32")
        entry = {"methods": methods, "megapixels": mp, "border": s}
        if "psnr_y" in methods["model"]:
            entry["model_minus_bicubic_db"] = methods["model"]["psnr_y"] - methods["bicubic"]["psnr_y"]
            entry["model_minus_bicubic_ssim"] = methods["model"]["ssim_y"] - methods["bicubic"]["ssim_y"]
        results[str(s)] = entry
        pic = _picture_name(names)
        picture[s] = {k: v[pic] for k, v in outs.items()} | {"hr": hr[pic], "name": pic}
    return results, picture


def speed(photo: np.ndarray, jobs: list[tuple[str, dict, int]], store: Path, runner: str, work: Path,
          say: Callable[[str], None], megapixels: float = 4.0) -> dict:
    """s/MP of each (job, model, scale) on one large photo (Lanczos-enlarged to about `megapixels` of output).

    The small crops of the quality tables measure process start-up as much as the model; a photo of several
    megapixels runs in tiles, as users' photos do. Reports the job's own time after its start-up.
    """
    from PIL import Image

    out: dict = {}
    for job, m, s in jobs:
        key = f"{job} x{s}" if job == "upscale" else job
        if m.get("status") != "ok":
            out[key] = {"status": "missing", "spec": m["spec"]}
            continue
        side = int(round((megapixels * 1e6) ** 0.5 / s))  # input side, so the output has about `megapixels`
        big = np.asarray(Image.fromarray(photo).resize((side * 4 // 3, side * 3 // 4), Image.LANCZOS))
        folder = work / f"speed-{key.replace(' ', '')}"
        in_dir, out_dir = folder / "in", folder / "out"
        save_png(in_dir / "big.png", big)
        say(f"speed: {key} on one {big.shape[1]}x{big.shape[0]} photo ({m['id']})")
        cli = run_cli(job, in_dir, out_dir, m, store, runner)
        out_mp = big.shape[0] * big.shape[1] * s * s / 1e6
        running = cli["job_wall_s"] - (cli["job_startup_s"] or 0.0)
        out[key] = {"id": m["id"], "input": list(big.shape[:2]), "output_megapixels": round(out_mp, 3),
                    "s_per_mp_job": running / out_mp, "s_per_mp_process": cli["process_s"] / out_mp, "cli": cli}
    return out


def embed(model: dict, store: Path, runner: str, work: Path, seed: int, say: Callable[[str], None],
          limit: int | None = None) -> dict:
    """kNN accuracy and P@10 of the model's embeddings (via `aeflow embed`), PCA at the same dimension, raw pixels."""
    from sklearn.decomposition import PCA

    from pipeline.embeddings import read_embeddings, vectors_of

    say("embed: loading builtin:mnist (ae validation split) and builtin:digits")
    sets, train = digit_sets(seed, limit)
    x_train = train.reshape(len(train), -1).astype(np.float32) / 255.0
    results, pca, dim = {}, None, None
    for name, (x, y) in sets.items():
        folder = work / f"embed-{name}" / "in"
        files = write_digits(folder, x)
        mp = len(x) * 28 * 28 / 1e6
        pixels = read_digits(folder, files)
        methods: dict = {}
        if model.get("status") == "ok":
            say(f"embed {name} ({len(x)} digits): model {model['id']} via `aeflow embed`")
            out_dir = work / f"embed-{name}" / "out"
            try:
                cli = run_cli("embed", folder, out_dir, model, store, runner)
                t = read_embeddings(out_dir, columns=["path", "vector"])
                row = {p: i for i, p in enumerate(t.column("path").to_pylist())}
                vec = vectors_of(t)[[row[f] for f in files]]  # back in label order, joined by file name
                dim = vec.shape[1]
                methods["ae"] = _embed_scores(vec, y, seed, cli["process_s"], mp, dim=dim,
                                              s_per_mp_job=(cli["job_wall_s"] - (cli["job_startup_s"] or 0)) / mp,
                                              cli=cli, status="ok", id=model["id"])
            except (RuntimeError, OSError, KeyError, ValueError) as exc:
                say(f"  failed: {exc}")
                methods["ae"] = {"status": "error", "spec": model["spec"], "error": str(exc)}
        else:
            methods["ae"] = {"status": "missing", "spec": model["spec"], "error": model.get("error")}
        if pca is None:
            # PCA at the ae's dimension, fitted on the MNIST training split the ae's validation split is held out of
            n_comp = min(dim or model.get("latent_dim") or 32, x_train.shape[1], len(x_train))
            say(f"embed: fitting PCA({n_comp}) on {len(x_train)} MNIST training digits")
            t0 = time.perf_counter()
            pca = PCA(n_components=n_comp, random_state=seed).fit(x_train)
            fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        z = pca.transform(pixels)
        methods["pca"] = _embed_scores(z, y, seed, time.perf_counter() - t0, mp, dim=pca.n_components_,
                                       fit_s=fit_s, fit_on=f"MNIST train split ({len(x_train)} digits)")
        # the ae's vectors are L2-normalised: PCA normalised the same way, so the gap is not just the norm
        zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        methods["pca_l2"] = _embed_scores(zn, y, seed, None, mp, dim=pca.n_components_)
        methods["pixels"] = _embed_scores(pixels, y, seed, None, mp, dim=pixels.shape[1])
        entry = {"n": int(len(x)), "classes": int(len(np.unique(y))), "methods": methods}
        if "knn_acc" in methods["ae"]:
            # against the better of the two PCA variants
            best = max(("pca", "pca_l2"), key=lambda m: methods[m]["knn_acc"])
            entry["ae_minus_pca"] = {k: methods["ae"][k] - methods[best][k] for k in ("knn_acc", "p_at_10")}
            entry["ae_minus_pca"]["against"] = best
        results[name] = entry
    return results


def _embed_scores(x: np.ndarray, y: np.ndarray, seed: int, seconds: float | None, mp: float, **extra) -> dict:
    return {"knn_acc": qm.knn_accuracy(x, y, k=5, folds=5, seed=seed), "p_at_10": qm.precision_at_k(x, y, 10),
            "s_per_mp": None if seconds is None else seconds / mp, **extra}
