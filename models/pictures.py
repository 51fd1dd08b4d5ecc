"""PNG pictures beside a model: reconstructions, training curves, and the latent scatter and manifold of 2-d VAEs."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from models.data import PatchData, add_noise, bicubic_down

GRID_SAMPLES = 8     # digit samples per reconstruction row
PHOTO_SAMPLES = 4    # photo crops per reconstruction row
PHOTO_CROP = 128
MANIFOLD_N = 10      # the manifold picture is MANIFOLD_N x MANIFOLD_N decoded latents


def _save(fig, path: Path) -> str:
    """Write a matplotlib Figure to path atomically (temp name in the same folder, then os.replace)."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.png")
    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    os.replace(tmp, path)
    return str(path)


def _figure(w: float, h: float):
    # Figure without pyplot: no global backend state, renders with Agg, never opens a window.
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _show(ax, img: np.ndarray, title: str | None = None) -> None:
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
              vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_ylabel(title)


def _grid(rows: list[tuple[str, list[np.ndarray]]], path: Path, title: str) -> str:
    ncol = max(len(r[1]) for r in rows)
    fig = _figure(1.6 * ncol, 1.7 * len(rows))
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        for j in range(ncol):
            if j < len(imgs):
                _show(axes[i][j], imgs[j], label if j == 0 else None)
            else:
                axes[i][j].axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def reconstruction_grid(model, kind: str, ds, path: Path, seed: int = 0) -> str:
    """Rows input / degraded / output for a few validation samples."""
    import torch

    from models.evaluate import center_crop, run_image_model

    if isinstance(ds, PatchData):
        scale = getattr(model.cfg, "scale", 1)
        clean = [center_crop(im, PHOTO_CROP, multiple=scale) for im in ds.val[:PHOTO_SAMPLES]]
        if kind == "denoise":
            rng = np.random.default_rng(seed)
            degraded = [add_noise(c[None], 25, 25, rng)[0] for c in clean]
            label = "noisy σ=25"
        else:  # show the low-resolution input at the output's size (pixel replication)
            degraded = [bicubic_down(c, scale) for c in clean]
            label = f"input (1/{scale})"
        outputs = [run_image_model(model, d) for d in degraded]
        if kind == "upscale":
            degraded = [np.repeat(np.repeat(d, scale, 0), scale, 1) for d in degraded]
        rows = [("clean", clean), (label, degraded), ("output", outputs)]
    else:
        x = torch.from_numpy(ds.x_val[:GRID_SAMPLES])
        with torch.no_grad():
            out = model(x)[0]  # ae: (x_hat, z); vae: (x_hat, mu, logvar), x_hat of the mean in eval mode
        to_u8 = lambda t: (t.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy())  # noqa: E731
        rows = [("input", list(to_u8(x))), ("output", list(to_u8(out)))]
    return _grid(rows, path, f"{kind}: reconstructions on validation data")


def training_curves(history: list[dict], path: Path, kind: str) -> str:
    """Train and validation loss per epoch."""
    fig = _figure(6, 4)
    ax = fig.subplots()
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"{kind}: training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def latent_scatter(model, ds, path: Path) -> str:
    """2-d latent means of (up to 2000) training and all validation samples, coloured by class when labelled."""
    import torch

    x = np.concatenate([ds.x_train[:2000], ds.x_val])
    y = None if ds.y_train is None else np.concatenate([ds.y_train[:2000], ds.y_val])
    with torch.no_grad():
        mu = model.encode(torch.from_numpy(x))[0].numpy()
    fig = _figure(6, 5)
    ax = fig.subplots()
    sc = ax.scatter(mu[:, 0], mu[:, 1], c=y if y is not None else "tab:blue", cmap="tab10", s=4)
    if y is not None:
        fig.colorbar(sc, ax=ax, label="class")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("latent means of the data")
    return _save(fig, path)


def latent_manifold(model, path: Path, n: int = MANIFOLD_N) -> str:
    """n x n images decoded from a grid of z at the Gaussian quantiles (the classic VAE manifold picture)."""
    import torch
    from scipy.stats import norm

    q = norm.ppf(np.linspace(0.05, 0.95, n))
    zs = np.array([[xi, yi] for yi in q[::-1] for xi in q], dtype=np.float32)  # rows top to bottom: z[1] falls
    with torch.no_grad():
        imgs = model.decode(torch.from_numpy(zs)).clamp(0, 1).mul(255).byte().permute(0, 2, 3, 1).numpy()
    s, c = imgs.shape[1], imgs.shape[3]
    canvas = imgs.reshape(n, n, s, s, c).transpose(0, 2, 1, 3, 4).reshape(n * s, n * s, c)
    fig = _figure(7, 7)
    ax = fig.subplots()
    _show(ax, canvas)
    ax.set_title("decoded latent grid (Gaussian quantiles)")
    return _save(fig, path)


def make_pictures(checkpoint: Path, out_dir: Path, data: str | None = None, seed: int = 0,
                  limit: int | None = None) -> list[str]:
    """Write the model's pictures into out_dir; returns the paths written."""
    from models.checkpoint import load_checkpoint
    from models.evaluate import load_for_eval

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, settings, ds = load_for_eval(Path(checkpoint), data, limit)
    kind = settings.kind
    files = [reconstruction_grid(model, kind, ds, out_dir / "reconstructions.png", seed)]
    history = load_checkpoint(checkpoint).get("history") or []
    if history:
        files.append(training_curves(history, out_dir / "training_curves.png", kind))
    if kind in ("vae", "conv-vae") and model.cfg.latent_dim == 2:
        files.append(latent_scatter(model, ds, out_dir / "latent_scatter.png"))
        files.append(latent_manifold(model, out_dir / "latent_manifold.png"))
    return files
