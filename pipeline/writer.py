"""Output writing: paths confined to OUT_DIR, atomic image files (temp name in the target folder, then os.replace)."""
from __future__ import annotations

import errno
import io
import os
from pathlib import Path, PurePosixPath

import numpy as np

from aeflow import storage
from aeflow.errors import UsageError

OUTPUT_FORMATS = ("same", "png", "jpg", "webp")
_PIL_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
               ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF"}
JPEG_QUALITY = 95
# Formats that can carry an alpha channel; others (JPEG, BMP, GIF) get the image composited on white.
ALPHA_SUFFIXES = (".png", ".webp", ".tif", ".tiff")
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
# Top-level names under OUT_DIR that belong to aeflow itself; an input may not write over them.
RESERVED = ("_aeflow", "embeddings", "index")


class OutputPathError(ValueError):
    """An output path that would land outside OUT_DIR (or on aeflow's own files)."""


class OutputSpaceError(UsageError):
    """OUT_DIR's disk is full (or over quota): the job stops at once; free space and rerun to resume (exit 2)."""


def output_rel(rel: str, fmt: str) -> str:
    """Relative output path for relative input path `rel` under --format fmt ('same' keeps the suffix)."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(OUTPUT_FORMATS)}")
    if fmt == "same":
        return rel
    return str(PurePosixPath(rel).with_suffix("." + fmt))


def plain_rel(rel: str) -> PurePosixPath:
    """rel as a path, refusing absolute paths, '..', empty parts and aeflow's reserved folders."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")) or "\\" in rel:
        raise OutputPathError(f"refusing output path {rel!r}: not a plain relative path")
    if p.parts[0] in RESERVED:
        raise OutputPathError(f"refusing output path {rel!r}: {p.parts[0]}/ is reserved for aeflow's own files")
    return p


def confined_path(out_root: Path, rel: str) -> Path:
    """OUT_DIR/rel, refusing absolute paths, '..', aeflow's reserved folders, and symlinks leading outside.

    out_root must already be resolved. Parent folders are created; the resolved parent must still be
    inside out_root (a symlinked folder inside OUT_DIR cannot redirect a write elsewhere).
    """
    p = plain_rel(rel)
    target = out_root.joinpath(*p.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    parent = target.parent.resolve()
    if parent != out_root and out_root not in parent.parents:
        raise OutputPathError(f"refusing output path {rel!r}: it resolves to {parent}, outside {out_root}")
    return parent / target.name


def tmp_name(path: Path) -> Path:
    """The temporary name a file is written under before os.replace (fixed, so a rerun reuses it)."""
    return path.with_name(f".{path.name}.aeflow.tmp")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write data to path via a temp file in the same folder and os.replace; never follows a symlinked temp."""
    tmp = tmp_name(path)
    if os.path.lexists(tmp):
        os.unlink(tmp)  # left by a killed run
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def encode_image(image: np.ndarray, suffix: str, icc_profile: bytes | None = None) -> bytes:
    """Encode uint8 HxWxC to the format named by suffix (JPEG/WebP quality 95, ICC profile kept)."""
    from PIL import Image

    fmt = _PIL_FORMAT.get(suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write {suffix!r} images")
    im = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    params: dict = {}
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = JPEG_QUALITY
    if icc_profile and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        params["icc_profile"] = icc_profile
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def with_alpha(image: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """image (HxWx1|3) with the input's alpha plane appended, resized (bicubic) when the model changed the size."""
    if alpha is None:
        return image
    h, w = image.shape[:2]
    if alpha.shape != (h, w):  # upscale: the alpha plane follows the image
        from PIL import Image

        alpha = np.asarray(Image.fromarray(alpha).resize((w, h), Image.BICUBIC))
    return np.ascontiguousarray(np.concatenate([image, alpha[..., None]], axis=2))


def write_image(out_root, rel: str, image: np.ndarray, icc_profile: bytes | None = None,
                alpha: np.ndarray | None = None) -> int:
    """Encode and atomically write image to OUT_DIR/rel (confined); returns the bytes written.

    alpha (HxW uint8, the input's) is kept where the format can hold it. A full disk raises OutputSpaceError
    (the temp file is removed: no partial file is ever visible). An s3:// OUT_DIR gets the object in one PUT.
    """
    if storage.is_remote(out_root):
        p = plain_rel(rel)
        if alpha is not None and p.suffix.lower() in ALPHA_SUFFIXES:
            image = with_alpha(image, alpha)
        data = encode_image(image, p.suffix, icc_profile)
        storage.write_bytes(storage.join(out_root, rel), data)
        return len(data)
    out_root = Path(out_root)
    try:
        path = confined_path(out_root, rel)
        if alpha is not None and path.suffix.lower() in ALPHA_SUFFIXES:
            image = with_alpha(image, alpha)
        data = encode_image(image, path.suffix, icc_profile)
        write_bytes_atomic(path, data)
    except OSError as exc:
        if exc.errno in FULL_DISK:
            raise OutputSpaceError(f"no space left on the disk of {out_root} (writing {rel}): the job stopped; "
                                   "free some space and rerun the same command to resume") from None
        raise
    return len(data)
