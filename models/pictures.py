"""PNG pictures beside a model: reconstructions, training curves, the latent scatter and manifold of 2-d VAEs/AAEs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aeflow.files import atomic_path
from models.data import PatchData, add_noise, bicubic_down

GRID_SAMPLES = 8     # digit samples per reconstruction row
PHOTO_SAMPLES = 4    # photo crops per reconstruction row
PHOTO_CROP = 128
MANIFOLD_N = 10      # the manifold picture is MANIFOLD_N x MANIFOLD_N decoded latents


def _save(fig, path: Path) -> str:
    """Write a matplotlib Figure to path atomically (temp name in the same folder, then os.replace)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
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

    if kind == "photo-ae":  # the clean crop, an edited copy of it, and what the decoder makes of the copy
        from models.views import view_batch

        v1, _, clean = view_batch(ds.val, PHOTO_SAMPLES * 2, model.cfg.input_size, np.random.default_rng(seed))
        with torch.no_grad():
            out = model(torch.from_numpy(v1).permute(0, 3, 1, 2).float() / 255.0)[0]
        outputs = list(out.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy())
        rows = [("clean crop", list(clean)), ("edited copy", list(v1)), ("decoded", outputs)]
    elif isinstance(ds, PatchData):
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
    """Train and validation loss per epoch; beside it the discriminator's accuracy when the run has one (aae)."""
    critic = all("d_acc" in h for h in history)
    fig = _figure(11 if critic else 6, 4)
    axes = fig.subplots(1, 2 if critic else 1, squeeze=False)[0]
    ax = axes[0]
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"{kind}: training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    if critic:
        ax = axes[1]
        ax.plot(ep, [h["d_acc"] for h in history], "o-", color="tab:red", label="discriminator accuracy")
        ax.axhline(0.5, color="grey", ls="--", label="chance (latents match the prior)")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("epoch")
        ax.set_title("discriminator: prior samples vs encoded latents")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    return _save(fig, path)


def _latents(model, x: np.ndarray) -> np.ndarray:
    """Latent codes of x: the mean for VAEs, the code itself for the aae."""
    import torch

    with torch.no_grad():
        z = model.encode(torch.from_numpy(x))
    return (z[0] if isinstance(z, tuple) else z).numpy()


def latent_scatter(model, ds, path: Path) -> str:
    """2-d latent means of (up to 2000) training and all validation samples, coloured by class when labelled."""
    import torch

    x = np.concatenate([ds.x_train[:2000], ds.x_val])
    y = None if ds.y_train is None else np.concatenate([ds.y_train[:2000], ds.y_val])
    mu = _latents(model, x)
    prior = callable(getattr(model, "prior_density", None))
    fig = _figure(11 if prior else 6, 5)
    axes = fig.subplots(1, 2 if prior else 1, squeeze=False)[0]
    ax = axes[0]
    sc = ax.scatter(mu[:, 0], mu[:, 1], c=y if y is not None else "tab:blue", cmap="tab10", s=4)
    if y is not None:
        fig.colorbar(sc, ax=ax, label="class")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("latent codes of the data" if prior else "latent means of the data")
    if prior:  # the aae: the density its latents were pushed toward, on the same axes
        lo, hi = ax.get_xlim(), ax.get_ylim()
        gx, gy = np.meshgrid(np.linspace(*lo, 200), np.linspace(*hi, 200))
        pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32))
        dens = model.prior_density(pts).numpy().reshape(gx.shape)
        axes[1].imshow(dens, origin="lower", extent=(*lo, *hi), aspect="auto", cmap="viridis")
        axes[1].set_xlabel("z[0]")
        axes[1].set_ylabel("z[1]")
        axes[1].set_title(f"prior density ({model.cfg.prior})")
    return _save(fig, path)


def latent_manifold(model, path: Path, n: int = MANIFOLD_N) -> str:
    """n x n images decoded from a grid of z at the Gaussian quantiles (the classic VAE manifold picture).

    An aae with a mixture prior gets one row per component instead, walking out along its radius (the
    layout of Makhzani et al. 2015, Figure 6), so every image comes from where the prior has mass.
    """
    import torch
    from scipy.stats import norm

    cfg = model.cfg
    if getattr(cfg, "prior", "gaussian") != "gaussian":
        n = cfg.components
        r = cfg.radius + cfg.radial_std * np.linspace(-2, 2, MANIFOLD_N)
        th = np.arange(n) * 2 * np.pi / n
        zs = np.array([[ri * np.cos(t), ri * np.sin(t)] for t in th for ri in r], dtype=np.float32)
        title = "decoded prior: one row per mixture component, outward along its radius"
        ncol = MANIFOLD_N
    else:
        q = norm.ppf(np.linspace(0.05, 0.95, n))
        zs = np.array([[xi, yi] for yi in q[::-1] for xi in q], dtype=np.float32)  # rows top to bottom: z[1] falls
        title = "decoded latent grid (Gaussian quantiles)"
        ncol = n
    with torch.no_grad():
        imgs = model.decode(torch.from_numpy(zs)).clamp(0, 1).mul(255).byte().permute(0, 2, 3, 1).numpy()
    s, c = imgs.shape[1], imgs.shape[3]
    canvas = imgs.reshape(n, ncol, s, s, c).transpose(0, 2, 1, 3, 4).reshape(n * s, ncol * s, c)
    fig = _figure(7, 7)
    ax = fig.subplots()
    _show(ax, canvas)
    ax.set_title(title)
    return _save(fig, path)


def copy_search(model, ds, path: Path, seed: int = 0, queries: int = 6, shown: int = 4) -> str:
    """Edited copies of validation photos (left) and the originals nearest to each, with cosine similarity.

    The originals are every validation photo and its four quarters (the card's copy metric); the true
    original is framed green, others red.
    """
    import torch

    from aeflow.imageio import fit_square
    from models.views import edited, whole_and_quarters

    size, fit = model.cfg.input_size, model.cfg.fit
    rng = np.random.default_rng([seed, 47])
    pieces = [p for im in ds.val for p in whole_and_quarters(im)]
    originals = np.stack([fit_square(p, size, fit) for p in pieces])
    picks = rng.choice(np.arange(0, len(pieces), 5), size=min(queries, len(ds.val)), replace=False)
    copies = np.stack([edited(pieces[i], rng, size, fit) for i in picks])
    with torch.no_grad():
        enc = lambda a: model.encode(torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0).numpy()  # noqa: E731
        zo, zc = enc(originals), enc(copies)
    sims = zc @ zo.T
    fig = _figure(1.6 * (shown + 1), 1.8 * len(picks))
    axes = fig.subplots(len(picks), shown + 1, squeeze=False)
    for r, (q, i) in enumerate(zip(copies, picks)):
        _show(axes[r][0], q, "edited copy")
        for c, j in enumerate(np.argsort(-sims[r])[:shown], start=1):
            ax = axes[r][c]
            _show(ax, originals[j])
            ax.set_title(f"{sims[r, j]:.3f}", fontsize=9)
            for spine in ax.spines.values():
                spine.set_edgecolor("green" if j == i else "red")
                spine.set_linewidth(3)
    fig.suptitle("photo-ae: nearest originals of edited copies (validation photos and their quarters)")
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
    if kind == "photo-ae":
        files.append(copy_search(model, ds, out_dir / "copy_search.png", seed))
    if kind in ("vae", "conv-vae", "aae") and model.cfg.latent_dim == 2:
        files.append(latent_scatter(model, ds, out_dir / "latent_scatter.png"))
        files.append(latent_manifold(model, out_dir / "latent_manifold.png"))
    return files
