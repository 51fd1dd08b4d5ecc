"""Inputs of bench/quality.py: the held-out photo folder, photos read back, the digit sets as PNG folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# The held-out yardstick: never trained on (models.data.HELDOUT_PHOTOS) plus two grey PyWavelets photos.
PYWT_PHOTOS = ("aero", "ascent")
CROP = 256
PER_SOURCE = 2


def sources() -> list[str]:
    """Source names of the held-out photo folder, in file order."""
    from models.data import HELDOUT_PHOTOS

    return list(HELDOUT_PHOTOS) + list(PYWT_PHOTOS)


def source_image(name: str) -> np.ndarray:
    """One held-out source photo as uint8 HxWx3 (grey ones as three equal channels)."""
    if name in PYWT_PHOTOS:
        import pywt.data

        g = np.asarray(getattr(pywt.data, name)())
        g = g if g.dtype == np.uint8 else np.clip(np.rint(g), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    from models.data import HELDOUT_PHOTOS, skimage_photo

    if name not in HELDOUT_PHOTOS:  # only the held-out ones: the rest of skimage's photos train the models
        raise ValueError(f"{name!r} is not a held-out photo ({', '.join(sources())})")
    return skimage_photo(name)  # refuses reserved images


def crop_positions(h: int, w: int, size: int = CROP) -> list[tuple[int, int]]:
    """Two crops, top-left and bottom-right corners: as far apart as the photo allows, disjoint if it is big enough."""
    if h < size or w < size:
        raise ValueError(f"a {h}x{w} photo is smaller than the {size}x{size} crop")
    return [(0, 0), (h - size, w - size)]


def make_photos(out: Path, size: int = CROP) -> list[Path]:
    """Write the held-out folder: PER_SOURCE size² crops per source photo, `<source>-<k>.png`, same bytes each run."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sources():
        img = source_image(name)
        for k, (y, x) in enumerate(crop_positions(*img.shape[:2], size)[:PER_SOURCE]):
            p = out / f"{name}-{k}.png"
            Image.fromarray(np.ascontiguousarray(img[y:y + size, x:x + size])).save(p, optimize=False)
            written.append(p)
    return written


def make_crops(source: Path, out: Path, size: int = CROP) -> list[Path]:
    """One size² centre crop of every photo under `source` (e.g. PHOTOS/heldout of `python -m models.photos fetch`).

    Written as `<relative path>.png`, same bytes each run; photos smaller than the crop are skipped.
    """
    from PIL import Image

    from aeflow.imageio import iter_image_paths, load_image

    source, out = Path(source), Path(out)
    written = []
    for p in iter_image_paths(source):
        img = load_image(p, channels=3)
        h, w = img.shape[:2]
        if min(h, w) < size:
            continue
        y, x = (h - size) // 2, (w - size) // 2
        dest = (out / p.relative_to(source)).with_suffix(".png")
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img[y:y + size, x:x + size])).save(dest, optimize=False)
        written.append(dest)
    if not written:
        raise FileNotFoundError(f"no photo of at least {size}x{size} under {source}")
    return written


def load_photos(folder: Path) -> list[tuple[str, np.ndarray]]:
    """(path relative to folder, uint8 HxWx3) for every image under folder, decoded as the jobs decode them."""
    from aeflow.imageio import iter_image_paths, load_image

    folder = Path(folder)
    out = [(p.relative_to(folder).as_posix(), load_image(p, channels=3)) for p in iter_image_paths(folder)]
    if not out:
        raise FileNotFoundError(f"no images under {folder}")
    return sorted(out, key=lambda t: t[0])


def save_png(path: Path, arr: np.ndarray) -> None:
    """Save uint8 HxW or HxWx3 as PNG, creating folders."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def digit_sets(seed: int = 0, limit: int | None = None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """({'mnist': (uint8 Nx28x28, labels), 'digits': ...}, MNIST train split uint8 Nx28x28 for fitting PCA).

    mnist is the ae's validation split (resolve_data's seeded split, val_fraction 0.1): held out from its
    training; digits is all of scikit-learn's digits. `limit` keeps a seeded random subset (smoke runs).
    """
    from models.data import resolve_data

    def u8(x: np.ndarray) -> np.ndarray:
        return np.rint(x[:, 0] * 255.0).astype(np.uint8)  # float NCHW [0, 1] back to the uint8 it came from

    mn = resolve_data("builtin:mnist", "ae", input_size=28, channels=1, val_fraction=0.1, seed=seed)
    dg = resolve_data("builtin:digits", "ae", input_size=28, channels=1, val_fraction=0.1, seed=seed)
    sets = {"mnist": (u8(mn.x_val), mn.y_val),
            "digits": (np.concatenate([u8(dg.x_train), u8(dg.x_val)]), np.concatenate([dg.y_train, dg.y_val]))}
    if limit is not None:
        rng = np.random.default_rng(seed)
        sets = {k: (x[keep], y[keep]) for k, (x, y) in sets.items()
                for keep in [np.sort(rng.permutation(len(x))[:limit])]}
    return sets, u8(mn.x_train)


def write_digits(folder: Path, x: np.ndarray) -> list[str]:
    """Each digit as a 28x28 grey PNG named by its index (`00012.png`), so labels join back by index."""
    names = []
    for i, a in enumerate(x):
        name = f"{i:05d}.png"
        save_png(Path(folder) / name, a)
        names.append(name)
    return names


def read_digits(folder: Path, names: list[str]) -> np.ndarray:
    """The written PNGs read back as float (N, 784) in [0, 1]: what PCA and the pixel reference see."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(Path(folder) / n).convert("L"), np.float32).reshape(-1) / 255.0
                     for n in names])
