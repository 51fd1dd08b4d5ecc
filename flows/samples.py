"""The demo's sample folders: crops of unreserved scikit-image photos (clean, noisy, low-res) plus a few bad files."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aeflow.files import atomic_path

# Unreserved photos only (never chelsea/cat, coffee, stereo_motorcycle, sklearn china/flower).
SAMPLE_SOURCES = ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera",
                  "coins", "brick", "gravel", "clock")
BAD_FILES = {"corrupt.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 truncated here", "empty.png": b"",
             "notes.png": b"this is a text file, not a PNG\n"}


@dataclass
class SampleFolders:
    """Where the sample images went: ground truth, the denoise input, the upscale input."""

    clean: Path
    noisy: Path
    lowres: Path
    sigma: float
    count: int
    bad: tuple[str, ...] = tuple(BAD_FILES)


def _photo(name: str) -> np.ndarray:
    # the training data's loader: it refuses the images reserved for independent evaluation
    from models.data import skimage_photo

    return skimage_photo(name)


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def make_sample_folders(root: str | os.PathLike, count: int = 24, size: tuple[int, int] = (96, 128),
                        sigma: float = 25.0, seed: int = 0) -> SampleFolders:
    """Write `count` crops (HxW = size, even) as clean/, noisy/ (Gaussian σ) and lowres/ (÷2), plus bad files."""
    from PIL import Image

    h, w = size
    if h % 2 or w % 2:
        raise ValueError(f"crop size must be even so that x2 upscaling restores it, got {size}")
    root = Path(root)
    folders = SampleFolders(clean=root / "clean", noisy=root / "noisy", lowres=root / "lowres", sigma=sigma,
                            count=count)
    rng = np.random.default_rng(seed)
    photos = [_photo(n) for n in SAMPLE_SOURCES]
    for d in (folders.clean, folders.noisy, folders.lowres):
        (d / "more").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src = photos[i % len(photos)]
        y = int(rng.integers(0, src.shape[0] - h + 1))
        x = int(rng.integers(0, src.shape[1] - w + 1))
        crop = src[y:y + h, x:x + w]
        # Every third image in a subfolder: jobs mirror the input tree.
        rel = Path("more" if i % 3 == 2 else ".") / f"{SAMPLE_SOURCES[i % len(photos)]}-{i:03d}.png"
        noisy = np.clip(crop + rng.normal(0, sigma, crop.shape), 0, 255).round().astype(np.uint8)
        low = np.asarray(Image.fromarray(crop).resize((w // 2, h // 2), Image.BICUBIC))
        _save_png(crop, folders.clean / rel)
        _save_png(noisy, folders.noisy / rel)
        _save_png(low, folders.lowres / rel)
    for d in (folders.clean, folders.noisy, folders.lowres):
        for name, data in BAD_FILES.items():
            (d / name).write_bytes(data)
    return folders


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of the same shape."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def mean_psnr(clean_dir: Path, test_dir: Path) -> tuple[float | None, int]:
    """Mean PSNR of every image in test_dir against the same relative path in clean_dir, and how many matched."""
    from aeflow.imageio import ImageDecodeError, iter_image_paths, load_image

    values = []
    for p in iter_image_paths(clean_dir):
        q = test_dir / p.relative_to(clean_dir)
        if not q.is_file():
            continue
        try:
            a, b = load_image(p), load_image(q)
        except ImageDecodeError:
            continue
        a, b = np.asarray(a)[..., :3], np.asarray(b)[..., :3]
        if a.shape == b.shape:
            values.append(psnr(a, b))
    return (float(np.mean(values)) if values else None), len(values)


def make_labelled_crops(root: str | os.PathLike, per_photo: int = 12, size: int = 96, seed: int = 1) -> Path:
    """Random crops (random scale, flips) of each source photo in root/<photo>/: training data for the
    autoencoder, labelled by photo, so kNN accuracy (and the promotion gate) can score its embeddings."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in SAMPLE_SOURCES:
        src = _photo(name)
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_photo):
            side = int(rng.integers(size, min(src.shape[:2]) + 1))
            y = int(rng.integers(0, src.shape[0] - side + 1))
            x = int(rng.integers(0, src.shape[1] - side + 1))
            crop = np.asarray(Image.fromarray(src[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR))
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            _save_png(np.ascontiguousarray(crop), root / name / f"{k:03d}.png")
    return root

