"""2-d latent maps of stored encoders side by side (the VAE's and the AAE's), with how well each matches its prior.

    .venv/bin/python bench/latent_maps.py [--store DIR] [--models conv-vae,aae] [--out J.json] [--figure F.png]

Every model is run through its exported `model.onnx` (what `aeflow embed` runs) on MNIST's validation split,
which none of the MNIST models trained on. Per model: 5-NN accuracy of the 2-d codes (5-fold CV), the
squared MMD between the codes and samples of the model's prior (a VAE's is N(0, I); an AAE's is rebuilt from
its card) beside the floor two prior samples score, and the relative error of the codes' covariance.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def mnist_heldout() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N,28,28,1 images, labels) of MNIST's validation split (seed 0, 10%): held out from every recipe."""
    from models.data import resolve_data

    d = resolve_data("builtin:mnist", "ae", input_size=28, channels=1, val_fraction=0.1, seed=0)
    return np.rint(d.x_val[:, 0] * 255).astype(np.uint8)[..., None], np.asarray(d.y_val)


def prior_model(card: dict):
    """A torch module whose sample_prior/prior_density are the model's prior (N(0, I) for VAEs)."""
    from models.registry import create_model
    from models.train import TrainSettings, model_config

    settings = TrainSettings.from_dict(card["settings"])
    if card["kind"] == "aae":
        return create_model("aae", settings.size, **model_config(settings))
    return create_model("aae", "tiny", latent_dim=2, prior="gaussian")  # the same N(0, I) the VAE's KL aims at


def encode(path: Path, images: np.ndarray) -> np.ndarray:
    """Codes from the exported encoder graph, in batches of 256."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"image": images[i:i + 256]})[0] for i in range(0, len(images), 256)])


def recon_mse(ref, z: np.ndarray, images: np.ndarray) -> float:
    """Mean squared error (pixels in [0, 1]) of decoder.onnx(codes) against the images: comparable across kinds."""
    import onnxruntime as ort

    dec = ort.InferenceSession(str(ref.file("decoder.onnx")), providers=["CPUExecutionProvider"])
    out = np.concatenate([dec.run(None, {"latent": z[i:i + 256]})[0] for i in range(0, len(z), 256)])
    return float(np.mean((out.astype(np.float64) - images.astype(np.float64)) ** 2) / 255.0 ** 2)


def pca_reference(images: np.ndarray, labels: np.ndarray) -> dict:
    """5-NN accuracy of 2-d PCA codes (PCA fitted on MNIST's training split), the linear baseline."""
    from sklearn.decomposition import PCA

    from models.data import resolve_data

    train = resolve_data("builtin:mnist", "ae", input_size=28, channels=1, val_fraction=0.1, seed=0).x_train
    pca = PCA(n_components=2, random_state=0).fit(train.reshape(len(train), -1))
    z = pca.transform(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return {"model": "PCA (2 components)", "knn_acc": knn_cv(z, labels)}


def knn_cv(z: np.ndarray, y: np.ndarray) -> float:
    """5-NN accuracy, 5-fold stratified cross-validation (bench/quality.py's embedding score)."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(5), z, y, cv=5).mean())


def measure(spec: str, store, images: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """One model's codes and numbers."""
    import torch

    from models.adversarial import prior_match

    ref = store.resolve(spec)
    z = encode(ref.onnx_path(), images)
    if z.shape[1] != 2:
        raise SystemExit(f"{ref.id} has a {z.shape[1]}-d latent; the maps need 2-d models")
    prior = prior_model(ref.card)
    lab = torch.from_numpy(labels) if getattr(prior, "conditional", False) else None
    # prior_match's critic accuracy needs the model's own critic, which the ONNX graph does not hold
    match = {k: v for k, v in prior_match(prior, torch.from_numpy(z), lab, seed).items() if k != "disc_acc"}
    card = ref.card
    return {"model": ref.id, "kind": card["kind"], "prior": card["settings"].get("prior", "gaussian"),
            "knn_acc": knn_cv(z, labels), "recon_mse": recon_mse(ref, z, images), **match,
            "card_metrics": {k: card["metrics"].get(k) for k in ("recon_mse", "recon", "elbo", "disc_acc")
                             if card["metrics"].get(k) is not None},
            "train_seconds": card.get("training", {}).get("seconds"), "z": z, "prior_model": prior}


def draw(results: list[dict], labels: np.ndarray, path: Path) -> None:
    """One panel per model: codes coloured by digit over the prior's density contours."""
    import torch
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(results), 5.2))
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, r in zip(axes, results):
        z = r["z"]
        lim = float(np.percentile(np.abs(z), 99.5)) * 1.1 + 0.5
        g = np.linspace(-lim, lim, 200)
        gx, gy = np.meshgrid(g, g)
        dens = r["prior_model"].prior_density(torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1)
                                                               .astype(np.float32))).numpy().reshape(gx.shape)
        ax.contour(gx, gy, dens, levels=6, colors="grey", linewidths=0.7)
        sc = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=5, vmin=-0.5, vmax=9.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"{r['model']} (prior: {r['prior']})\n5-NN {r['knn_acc']:.3f} · MMD² {r['prior_mmd']:.4f} "
                     f"(floor {r['prior_mmd_floor']:.4f})", fontsize=10)
    fig.colorbar(sc, ax=list(axes), label="digit", ticks=range(10), shrink=0.8)
    fig.suptitle("2-d latent codes of held-out MNIST digits; grey: the prior's density", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    """CLI entry."""
    from aeflow.store import ModelStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None, help="model store (default: $AEFLOW_HOME / ./aeflow-store, then the "
                                                  "shipped models)")
    ap.add_argument("--models", default="conv-vae,aae", help="comma-separated model specs with a 2-d latent")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N held-out digits (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    ap.add_argument("--figure", type=Path, default=None, help="write the side-by-side maps (PNG) here")
    args = ap.parse_args(argv)
    t0 = time.time()
    images, labels = mnist_heldout()
    images, labels = images[:args.limit], labels[:args.limit]
    store = ModelStore(args.store)
    results = [measure(s.strip(), store, images, labels, args.seed) for s in args.models.split(",") if s.strip()]
    pca = pca_reference(images, labels)
    for r in results:
        print(f"{r['model']:>20}  prior {r['prior']:<15} 5-NN {r['knn_acc']:.3f}  recon MSE {r['recon_mse']:.4f}  "
              f"MMD² {r['prior_mmd']:.4f} (floor {r['prior_mmd_floor']:.4f})  cov err {r['latent_cov_err']:.3f}")
    print(f"{pca['model']:>20}  5-NN {pca['knn_acc']:.3f}")
    if args.figure:
        draw(results, labels, args.figure)
    if args.out:
        rows = [{k: v for k, v in r.items() if k not in ("z", "prior_model")} for r in results]
        doc = {"command": " ".join(["bench/latent_maps.py", *(argv if argv is not None else sys.argv[1:])]),
               "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
               "data": f"MNIST validation split, {len(labels)} digits", "seconds": round(time.time() - t0, 1),
               "results": rows, "pca_reference": pca}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
