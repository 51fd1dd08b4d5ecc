"""Quality metrics of bench/quality.py: PSNR/SSIM on RGB, PSNR/SSIM on BT.601 Y with a border crop, kNN and P@k."""
from __future__ import annotations

import math

import numpy as np


def psnr(ref: np.ndarray, img: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB over every pixel and channel; inf when the images are equal."""
    mse = float(np.mean((np.asarray(ref, np.float64) - np.asarray(img, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)


def ssim_rgb(ref: np.ndarray, img: np.ndarray) -> float:
    """scikit-image SSIM of two uint8 HxWx3 images (mean over channels, data_range 255)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(ref, img, channel_axis=-1, data_range=255))


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of 0..255 RGB as float64 in [16, 235], unrounded (the usual super-resolution convention)."""
    a = np.asarray(rgb, np.float64)
    return 16.0 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0


def _crop(a: np.ndarray, border: int) -> np.ndarray:
    return a[border:a.shape[0] - border, border:a.shape[1] - border] if border else a


def psnr_y(ref: np.ndarray, img: np.ndarray, border: int) -> float:
    """PSNR on the Y channel with `border` pixels cropped from every side (SR papers crop `scale` pixels)."""
    return psnr(_crop(y_channel(ref), border), _crop(y_channel(img), border))


def ssim_y(ref: np.ndarray, img: np.ndarray, border: int) -> float:
    """SSIM on the same cropped Y channel (data_range 255, as on 0..255 images)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(_crop(y_channel(ref), border), _crop(y_channel(img), border),
                                       data_range=255))


def knn_accuracy(x: np.ndarray, y: np.ndarray, k: int = 5, folds: int = 5, seed: int = 0) -> float:
    """Mean accuracy of a k-NN classifier (Euclidean) over stratified `folds`-fold cross-validation."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    # fewer samples of a class than folds would make StratifiedKFold refuse: cap the folds (tiny smoke sets)
    folds = max(2, min(folds, int(np.bincount(np.unique(y, return_inverse=True)[1]).min())))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(KNeighborsClassifier(n_neighbors=k), x, y, cv=cv).mean())


def precision_at_k(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Mean over queries of the share of its k nearest neighbours (Euclidean, itself excluded) with its label."""
    from sklearn.metrics import pairwise_distances

    x = np.asarray(x, np.float64)
    k = min(k, len(x) - 1)
    d = pairwise_distances(x)
    # the query itself is excluded by position, not by distance: exact duplicates still count as neighbours
    np.fill_diagonal(d, np.inf)
    nn = np.argpartition(d, k - 1, axis=1)[:, :k]
    return float((np.asarray(y)[nn] == np.asarray(y)[:, None]).mean())
