"""Edited views of photos, for the photo autoencoder: what a copy of a photo goes through before it is found again.

The encoder sees one or two random edits of a random crop (the edits below, the ones people make to photos
they copy); the decoder is asked for the clean crop, and two edited views of the same crop are pulled
together in the latent (models.nets.photo_ae, models.train.compute_loss). Every view is squashed to S×S by
aeflow.imageio.fit_square, the function the batch job runs before the encoder.
"""
from __future__ import annotations

import io

import numpy as np

from aeflow.imageio import fit_square

EDITS = ("downscale", "jpeg", "crop", "tone", "grey", "noise", "rotate", "mirror", "letterbox")


def shrink(images: list[np.ndarray], short_side: int) -> list[np.ndarray]:
    """Each photo reduced by area averaging, by the largest whole factor that keeps its short side >= short_side."""
    from PIL import Image

    out = []
    for im in images:
        f = min(im.shape[:2]) // short_side
        out.append(np.asarray(Image.fromarray(im).reduce(f)) if f >= 2 else im)
    return out


def random_crop(img: np.ndarray, rng: np.random.Generator, min_area: float = 0.35) -> np.ndarray:
    """A random region of min_area..1 of the image's area, its aspect within 3:4..4:3 of the image's."""
    h, w = img.shape[:2]
    area = rng.uniform(min_area, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(round(min(h, h * np.sqrt(area / aspect))))
    cw = int(round(min(w, w * np.sqrt(area * aspect))))
    ch, cw = max(ch, 8), max(cw, 8)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return img[y:y + ch, x:x + cw]


def whole_and_quarters(img: np.ndarray) -> list[np.ndarray]:
    """The photo and its four quarters: five images that share content but are not copies of each other."""
    h, w = img.shape[:2]
    return [img] + [img[y:y + h // 2, x:x + w // 2] for y in (0, h // 2) for x in (0, w // 2)]


def apply_edit(img: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """One edit of a uint8 HxWx3 photo (names in EDITS), with random strength."""
    from PIL import Image, ImageEnhance

    h, w = img.shape[:2]
    if name == "crop":
        return random_crop(img, rng, min_area=0.5)
    if name == "mirror":
        return np.ascontiguousarray(img[:, ::-1])
    if name == "grey":
        g = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if name == "noise":
        sigma = rng.uniform(3, 20)
        return np.clip(img + rng.standard_normal(img.shape, dtype=np.float32) * sigma, 0, 255).round().astype(
            np.uint8)
    im = Image.fromarray(img)
    if name == "downscale":
        f = rng.uniform(0.25, 0.7)
        return np.asarray(im.resize((max(8, int(w * f)), max(8, int(h * f))), Image.BILINEAR))
    if name == "jpeg":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(rng.integers(10, 60)))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if name == "tone":
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.6, 1.4))
        return np.asarray(ImageEnhance.Contrast(im).enhance(rng.uniform(0.6, 1.4)))
    if name == "rotate":
        return np.asarray(im.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, expand=False,
                                    fillcolor=tuple(int(v) for v in img.reshape(-1, 3).mean(0))))
    if name == "letterbox":  # bars on two sides, as when a photo is fitted into another aspect ratio
        pad = int(rng.uniform(0.08, 0.25) * (h if rng.random() < 0.5 else w))
        colour = 0 if rng.random() < 0.7 else 255
        if rng.random() < 0.5:
            return np.pad(img, ((pad, pad), (0, 0), (0, 0)), constant_values=colour)
        return np.pad(img, ((0, 0), (pad, pad), (0, 0)), constant_values=colour)
    raise ValueError(f"unknown edit {name!r}; known: {', '.join(EDITS)}")


def edited(img: np.ndarray, rng: np.random.Generator, size: int, fit: str = "squash") -> np.ndarray:
    """One or two distinct random edits of img, then fit to size×size."""
    for name in rng.choice(EDITS, size=int(rng.integers(1, 3)), replace=False):
        img = apply_edit(img, str(name), rng)
    return fit_square(img, size, fit)


def view_batch(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator,
               fit: str = "squash", same_photo: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(view1, view2, clean), each uint8 N×S×S×3: two edited views of a random crop of a random photo, and the crop."""
    # The first 5 * same_photo rows: same_photo distinct photos, each whole and in quarters, cropped to >= 70% of
    # their area. The contrastive term makes them negatives of one another, so the code tells apart regions of
    # one photo (two skies, two halves of a wall), not only different photos.
    if 5 * same_photo > n or same_photo > len(images):
        raise ValueError(f"same_photo={same_photo} needs {5 * same_photo} rows and as many photos; "
                         f"the batch has {n} rows, the split {len(images)} photos")
    groups = [random_crop(p, rng, min_area=0.7) for k in rng.choice(len(images), same_photo, replace=False)
              for p in whole_and_quarters(images[int(k)])] if same_photo else []
    v1, v2, clean = (np.empty((n, size, size, 3), np.uint8) for _ in range(3))
    for i in range(n):
        crop = groups[i] if i < len(groups) else random_crop(images[int(rng.integers(len(images)))], rng)
        clean[i] = fit_square(crop, size, fit)
        v1[i], v2[i] = edited(crop, rng, size, fit), edited(crop, rng, size, fit)
    return v1, v2, clean
