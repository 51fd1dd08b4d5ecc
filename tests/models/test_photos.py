"""models/photos.py on a made-up package tree (no download): cut-out WebP, licences, downscale, the held-out split."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from models.photos import (
    RESERVED_PACKAGES,
    SOURCES,
    carve_webp,
    downscale,
    is_heldout,
    licence_for,
    prepare,
    sources_of,
)
from tests.conftest import make_photo

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: someone
License: GPL-3+

Files: src/activities/erase/resource/bear001.jpg
       src/activities/erase/resource/joybear002.jpg
Copyright: a photographer
License: CC-BY-SA-3.0

Files: src/activities/erase/resource/giant_panda.jpg
License: public-domain

Files: 16.04/friends_by_Someone.jpg
License: CC-BY-4.0

Files: images/*.png
License: GPL-3
"""


def _webp(h: int, w: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_photo(h, w, seed=seed)).save(buf, format="WEBP", quality=90)
    return buf.getvalue()


def test_carve_webp_finds_each_file_inside_an_archive():
    a, b = _webp(40, 50, 1), _webp(30, 20, 2)
    blob = b"qres\x00\x01RIFFjunk" + a + b"\x00" * 7 + b + b"tail"
    got = carve_webp(blob)
    assert got == [a, b] and Image.open(io.BytesIO(got[1])).size == (20, 30)


def test_licence_from_the_copyright_file():
    assert licence_for(COPYRIGHT, "usr/share/backgrounds/friends_by_Someone.jpg") == "CC-BY-4.0"  # exact name
    assert licence_for(COPYRIGHT, "usr/share/other/thing.jpg") == "GPL-3+"  # Files: *
    assert licence_for(COPYRIGHT, "usr/share/x/images/logo.png") == "GPL-3"  # pattern with its folder
    # an archive that keeps no names: every licence of that folder's stanzas (continued Files: lines included)
    assert licence_for(COPYRIGHT, "rcc/erase.rcc", folder="erase") == "CC-BY-SA-3.0 or public-domain"


def test_downscale_is_2_to_4x_and_the_split_is_stable():
    assert downscale(Image.new("RGB", (1920, 1080))).size == (640, 360)
    assert downscale(Image.new("RGB", (480, 360))).size == (240, 180)
    assert downscale(Image.new("RGB", (4000, 3000))).size == (1000, 750)
    keys = [f"pkg/photo-{i}" for i in range(700)]
    held = [k for k in keys if is_heldout(k)]
    assert 70 < len(held) < 130 and held == [k for k in keys if is_heldout(k)]
    assert not RESERVED_PACKAGES & {s.package for s in SOURCES}


def test_prepare_keeps_photos_writes_pngs_and_a_manifest(tmp_path):
    root = tmp_path / "x" / "mate-backgrounds"
    nature = root / "usr/share/backgrounds/mate/nature"
    nature.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(make_photo(600, 800, seed=i)).save(nature / f"p{i}.jpg", quality=92)
    Image.fromarray(make_photo(100, 120, seed=9)).save(nature / "icon.jpg")  # too small: not a photo
    doc = root / "usr/share/doc/mate-backgrounds"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Files: *\nLicense: GPL-2+\n")
    out = tmp_path / "out"
    rows = prepare({"mate-backgrounds": root}, out)
    assert len(rows) == 8 and {r["licence"] for r in rows} == {"GPL-2+"}
    for r in rows:
        im = Image.open(out / r["file"])
        assert im.format == "PNG" and im.size == (400, 300) and r["original_size"] == [800, 600]
        assert r["split"] == ("heldout" if is_heldout(f"mate-backgrounds/{(out / r['file']).stem}") else "train")
    assert (out / "licenses" / "mate-backgrounds.copyright").is_file()
    json.dumps(rows)  # the manifest is plain JSON
    assert np.asarray(Image.open(out / rows[0]["file"])).dtype == np.uint8
    (out / "manifest.json").write_text(json.dumps({"photos": rows}))
    src = sources_of(out, "train")
    assert src == {"mate-backgrounds": {"photos": sum(r["split"] == "train" for r in rows), "licences": ["GPL-2+"]}}
