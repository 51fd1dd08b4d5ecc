"""OUT_DIR/dedup/index.html: each duplicate group side by side, largest first, thumbnails inlined (no network)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from aeflow import storage
from aeflow.files import write_text

MAX_GROUPS = 300     # groups on the page (all of them are in groups.parquet / groups.csv)
MAX_PER_GROUP = 24   # thumbnails per group
THUMB = 160          # thumbnail box, pixels

_CSS = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em} .summary{color:#555;margin-bottom:1.5em}
.group{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em;margin:0 0 1.2em}
.group h2{font-size:1em;margin:0 0 .6em}
.items{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;width:%dpx} figure img{max-width:%dpx;max-height:%dpx;display:block;background:#eee}
figcaption{font-size:11px;word-break:break-all;color:#444}
.rep figcaption b{color:#0a6} .exact figcaption b{color:#c30} .missing{width:%dpx;height:60px;background:#eee}
""" % (THUMB, THUMB, THUMB, THUMB)

# Marks the page once every thumbnail has loaded (data-loaded / data-broken on <body>): a person sees the count
# in the header, and a headless browser can check it from the DOM.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.body.dataset.loaded = String(imgs.length - broken);
  document.body.dataset.broken = String(broken);
  document.getElementById('status').textContent = (imgs.length - broken) + ' thumbnails shown' +
    (broken ? ', ' + broken + ' could not be shown' : '');
});
"""


def _thumb(path) -> str | None:
    """A data: URI of a small JPEG of the image (a path or an s3:// URL), or None when it cannot be read."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path) as im:
            im = ImageOps.exif_transpose(im)
            im.draft("RGB", (THUMB, THUMB))
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a missing or unreadable file shows as a grey box, not a failed page
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _size(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def write_page(dest: Path, rows: list[dict], in_dir, summary: dict) -> Path:
    """Write the review page for groups.parquet's rows (sorted by group, representative first); returns dest."""
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    e = html.escape
    parts = ["<!doctype html><html lang=en><head><meta charset=utf-8><title>aeflow dedup</title>",
             f"<style>{_CSS}</style></head><body><h1>Duplicate groups</h1>",
             f"<p class=summary>{summary['groups']} groups, {summary['images_in_groups']} of {summary['images']} "
             f"images ({summary['exact_duplicates']} exact copies); {_size(summary['bytes_freeable'])} could be "
             f"freed by keeping one image per group. Threshold {summary['threshold']:.3f} (cosine), k "
             f"{summary['k']}, model {e(str(summary.get('model')))}. <span id=status></span></p>"]
    if len(groups) > MAX_GROUPS:
        parts.append(f"<p class=summary>The {MAX_GROUPS} largest groups are shown; all {len(groups)} are in "
                     "groups.csv and groups.parquet.</p>")
    for g, members in list(groups.items())[:MAX_GROUPS]:
        parts.append(f"<section class=group id=g{g}><h2>Group {g}: {len(members)} images</h2><div class=items>")
        for r in members[:MAX_PER_GROUP]:
            src = _thumb(storage.join(in_dir, r["path"])) if in_dir is not None else None
            cls = "rep" if r["representative"] else r["match"]
            label = "kept" if r["representative"] else f"{r['match']} {r['similarity']:.3f}"
            img = f"<img src='{src}' alt='{e(r['path'])}'>" if src else "<div class=missing></div>"
            parts.append(f"<figure class={cls}>{img}<figcaption><b>{e(label)}</b> {r['width']}×{r['height']}, "
                         f"{_size(r['bytes'])}<br>{e(r['path'])}</figcaption></figure>")
        if len(members) > MAX_PER_GROUP:
            parts.append(f"<p>… and {len(members) - MAX_PER_GROUP} more</p>")
        parts.append("</div></section>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return write_text(dest, "".join(parts))
