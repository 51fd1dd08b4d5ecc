"""Overlapping tiles for image2image models: each tile carries `halo` pixels of context, only its centre is kept.

Exactness: an output pixel depends on input pixels at most `halo` away. Each tile is run on its core plus
`halo` pixels of real context on every side (fewer only at the image border, where the untiled run sees the
same border), and only the core's output is pasted, so a tiled run equals an untiled one exactly whenever the
model's receptive field fits in the halo.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One tile: the core box it is responsible for and the larger box fed to the model (input pixels)."""

    y0: int
    y1: int
    x0: int
    x1: int
    ey0: int
    ey1: int
    ex0: int
    ex1: int


def _starts(n: int, tile: int) -> list[int]:
    return list(range(0, n, tile)) if n > 0 else []


def plan_tiles(h: int, w: int, tile: int, halo: int) -> list[Tile]:
    """Cover an h×w image with cores of at most tile×tile, each extended by halo (clipped at the border)."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    out = []
    for y0 in _starts(h, tile):
        for x0 in _starts(w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            out.append(Tile(y0, y1, x0, x1, max(0, y0 - halo), min(h, y1 + halo),
                            max(0, x0 - halo), min(w, x1 + halo)))
    return out


def predict_tiled(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int, halo: int,
                  scale: int = 1, batch_size: int = 8) -> np.ndarray:
    """Run `predict` (uint8 [N,h,w,C] -> uint8 [N,s*h,s*w,C']) over tiles of image (H,W,C) and stitch the result.

    Tiles of the same extended shape are batched together (most are interior tiles of one shape), so memory
    is bounded by batch_size tiles, not by the image.
    """
    h, w = image.shape[:2]
    tiles = plan_tiles(h, w, tile, halo)
    out = None
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        groups.setdefault((t.ey1 - t.ey0, t.ex1 - t.ex0), []).append(t)
    for group in groups.values():
        for i in range(0, len(group), max(1, batch_size)):
            chunk = group[i:i + batch_size]
            x = np.stack([image[t.ey0:t.ey1, t.ex0:t.ex1] for t in chunk])
            y = predict(x)
            if out is None:
                out = np.empty((h * scale, w * scale, y.shape[-1]), dtype=y.dtype)
            for t, yt in zip(chunk, y):
                # the core's place inside the extended tile, in output pixels
                cy, cx = (t.y0 - t.ey0) * scale, (t.x0 - t.ex0) * scale
                ch, cw = (t.y1 - t.y0) * scale, (t.x1 - t.x0) * scale
                out[t.y0 * scale:t.y1 * scale, t.x0 * scale:t.x1 * scale] = yt[cy:cy + ch, cx:cx + cw]
    assert out is not None, "empty image"
    return out
