"""Benchmark inputs: folders of realistic-ish JPEG photos made offline from scikit-image sample photos, cached."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

# scikit-image photos that ship inside the package (no download). Reserved evaluation photos are never
# used here: chelsea/cat, coffee, stereo_motorcycle, and scikit-learn's china/flower.
COLOUR_SOURCES = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
GREY_SOURCES = ("camera", "coins", "moon", "page", "brick", "grass", "gravel", "clock", "text")
RESERVED = frozenset({"chelsea", "cat", "coffee", "stereo_motorcycle", "china", "flower"})
PER_FOLDER = 500  # files per subfolder, so the listing walks a small tree as real photo dumps do
DONE = ".complete"  # marker written last: a folder without it was interrupted and is regenerated


def _sources() -> list[np.ndarray]:
    """The sample photos as uint8 HxWx3 (grey ones as three equal channels; _variant's gains tint them).

    Where scikit-image is not installed (the GPU machine's image), synthetic dead-leaves scenes stand in:
    the throughput of a job does not depend on what the pixels show.
    """
    try:
        import skimage.data as data
    except ImportError:
        from models.data import dead_leaves

        return [dead_leaves(512, np.random.default_rng([17, i])) for i in range(8)]

    assert not RESERVED & set(COLOUR_SOURCES + GREY_SOURCES)
    out = []
    for name in COLOUR_SOURCES:
        out.append(np.ascontiguousarray(getattr(data, name)()[..., :3]))
    for name in GREY_SOURCES:
        g = getattr(data, name)()
        out.append(np.repeat(g[..., None], 3, axis=2))
    return out


def _variant(src: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One random photo: crop (35-100% of the short side), resize to size², flips, tint, contrast, noise."""
    from PIL import Image

    h, w = src.shape[:2]
    side = int(min(h, w) * rng.uniform(0.35, 1.0))
    y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = src[y0:y0 + side, x0:x0 + side]
    img = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), dtype=np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.2:
        img = img[::-1]
    gain = rng.uniform(0.8, 1.2, 3) * rng.uniform(0.85, 1.15)  # white balance and exposure
    img = (img - 128) * rng.uniform(0.8, 1.2) + 128  # contrast
    img = img * gain + rng.normal(0, rng.uniform(0, 12), img.shape)  # sensor noise
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def make_photos(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """Folder root/photos-<size>px-<n> of n JPEGs (quality 80-95) in subfolders; reused when complete."""
    from PIL import Image
    from tqdm import tqdm

    d = Path(root) / f"photos-{size}px-{n}"
    if (d / DONE).is_file():
        return d
    tmp = d.with_name(d.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    sources = _sources()
    for i in tqdm(range(n), desc=f"photos {size}px", unit="img", leave=False):
        sub = tmp / f"{i // PER_FOLDER:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        img = _variant(sources[rng.integers(len(sources))], size, rng)
        Image.fromarray(img).save(sub / f"{i:06d}.jpg", quality=int(rng.integers(80, 96)))
    (tmp / DONE).write_text(f"{n} photos {size}x{size} seed {seed}\n")
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    return d


def replicate(src: Path, factor: int) -> Path:
    """src's images hard-linked `factor` times under new names (copy<k>/...): a bigger listing, same bytes on disk."""
    d = src.with_name(f"{src.name}-x{factor}")
    if (d / DONE).is_file():
        return d
    tmp = d.with_name(d.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(p for p in src.rglob("*.jpg"))
    for k in range(factor):
        for p in files:
            dst = tmp / f"copy{k:03d}" / p.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(p, dst)
            except OSError:  # another filesystem or no hard links: a copy is the same for the benchmark
                shutil.copyfile(p, dst)
    (tmp / DONE).write_text(f"{len(files)} x {factor}\n")
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    return d
