"""Training photos that ship in Debian packages: download, cut out, keep the real photos, downscale, split.

    python -m models.photos fetch DIR        # apt-get download + dpkg-deb -x (no root), then DIR/train, DIR/heldout

About 270 photos (animals, monuments, landscapes, close-ups, street scenes) under free licences; each one's
package, source path and licence go to DIR/manifest.json, and each package's copyright file to DIR/licenses/.
Only real photos are kept (renders, logos, drawings and calibration charts are left out by name below).
Photos are downscaled 2-4x with an area filter, which removes most of their compression noise, and saved as
PNG. One photo in seven, chosen by a hash of its name, goes to DIR/heldout for aeflow's own benchmarks.
The packages reserved for independent evaluation are never downloaded.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aeflow.files import atomic_path

# Reserved for independent evaluation by whoever checks aeflow: never downloaded, loaded or trained on.
RESERVED_PACKAGES = frozenset({"tuxtype-data", "palapeli-data", "plasma-workspace-wallpapers", "libjxl-testdata"})
HELDOUT_EVERY = 7  # one photo in seven (by name hash) is held out
MIN_SIDE = 300     # smaller files are sprites, icons or thumbnails


@dataclass(frozen=True)
class Source:
    """Where one package keeps its photos: glob patterns under the extracted tree, minus names that are not photos."""

    package: str
    patterns: tuple[str, ...]
    skip: frozenset = field(default_factory=frozenset)  # file stems that are renders, drawings or duplicates
    rcc: bool = False  # WebP files inside Qt resource archives, cut out at their RIFF....WEBP headers


SOURCES = (
    Source("gcompris-qt-data", tuple(f"usr/share/gcompris-qt/rcc/{n}.rcc" for n in (
        "erase", "explore_world_animals", "explore_farm_animals", "explore_monuments", "explore_world_music",
        "clickgame")), rcc=True),
    Source("lomiri-wallpapers-16.04", ("usr/share/backgrounds/*.jpg",),
           frozenset({"analogpattern_by_Peter_Nerlich", "greentock_by_Peter_Nerlich", "umang_by_Abhishek_Mudgal"})),
    Source("lomiri-wallpapers-20.04", ("usr/share/backgrounds/*.jpg",),
           frozenset({"Fossa_by_Jasper_Roks", "Infinite-Sea_by_Aury88", "Painting-Colors_by__herobrine7gamer"})),
    Source("lxqt-themes", tuple(f"usr/share/lxqt/wallpapers/{n}" for n in (
        "after-the-rain.jpg", "appleflower.png", "beam.png", "butterfly.png", "Butterfly-Kenneth-Wimer.jpg",
        "cloud.png", "drop.png", "flowers.png", "fog.jpg", "Valendas.png"))),
    Source("mate-backgrounds", ("usr/share/backgrounds/mate/nature/*",)),
    Source("tuxpaint-data", ("usr/share/tuxpaint/templates/*.jpg",)),
    Source("scratch", ("usr/share/scratch/Media/Backgrounds/*/*.jpg",),
           frozenset({"chalkboard", "party-room", "room1", "room2", "room3", "spotlight-stage", "woods-and-bench",
                      "school2"})),
    Source("opencv-doc", tuple(f"usr/share/doc/opencv-doc/examples/data/{n}" for n in (
        "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "building.jpg", "butterfly.jpg",
        "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg",
        "squirrel_cls.jpg", "stuff.jpg", "box_in_scene.png", "rubberwhale1.png", "left.jpg", "board.jpg"))),
)
assert not RESERVED_PACKAGES & {s.package for s in SOURCES}


def carve_webp(blob: bytes) -> list[bytes]:
    """The WebP files inside a blob (a Qt .rcc archive stores them whole): RIFF, little-endian size, 'WEBP'."""
    out, i = [], 0
    while (i := blob.find(b"RIFF", i)) >= 0:
        if blob[i + 8:i + 12] == b"WEBP":
            size = struct.unpack("<I", blob[i + 4:i + 8])[0] + 8
            out.append(blob[i:i + size])
            i += size
        else:
            i += 4
    return out


def _stanzas(copyright_text: str) -> list[tuple[list[str], str]]:
    """(file patterns, licence) of each stanza of a DEP-5 copyright file (continued Files: lines included)."""
    stanzas, files, in_files = [], None, False
    for line in copyright_text.splitlines():
        if line.startswith("Files:"):
            files, in_files = line[6:].split(), True
        elif in_files and line[:1] in (" ", "\t") and line.strip():
            files += line.split()
        else:
            in_files = False
            if line.startswith("License:") and files is not None:
                stanzas.append((files, line[8:].strip()))
                files = None
    return stanzas


def licence_for(copyright_text: str, relpath: str, folder: str | None = None) -> str:
    """The licence of an installed file from its package's DEP-5 copyright file.

    Install paths differ from the source paths the patterns name, so a pattern matches on its file name (with
    its folder's name where it names one, unless the name is exact); `Files: *` is the fallback. `folder`: for
    files cut out of an archive that keeps no names, every licence of the stanzas under a source folder of
    that name (e.g. an activity's resources), joined by " or ".
    """
    stanzas = _stanzas(copyright_text)
    fallback = next((lic for pats, lic in stanzas if "*" in pats), "see the package's copyright file")
    if folder is not None:
        lics = sorted({lic for pats, lic in stanzas for p in pats if f"/{folder}/" in f"/{p}"})
        return " or ".join(lics) if lics else fallback
    name, parts = Path(relpath).name, set(Path(relpath).parts)
    found = fallback
    for pats, lic in stanzas:
        for p in pats:
            pp = Path(p)
            wild = any(c in "*?[" for c in pp.name)
            if p != "*" and fnmatch.fnmatch(name, pp.name) and (not wild or len(pp.parts) == 1
                                                                  or pp.parent.name in parts):
                found = lic
    return found


def downscale(im, min_side: int = MIN_SIDE):
    """The photo reduced 2-4x by area averaging (the largest factor that keeps the short side >= 180 px)."""
    short = min(im.size)
    factor = max(2, min(4, round(short / 400)))
    while factor > 2 and short // factor < 180:
        factor -= 1
    return im.reduce(factor)


def is_heldout(key: str) -> bool:
    """Whether a photo (key: 'package/name') is held out of training: a stable hash, one in HELDOUT_EVERY."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % HELDOUT_EVERY == 0


def _candidates(src: Source, root: Path):
    """(name, bytes, source path) of every candidate photo one extracted package holds."""
    for pattern in src.patterns:
        for p in sorted(root.glob(pattern)):
            if src.rcc:
                for k, blob in enumerate(carve_webp(p.read_bytes())):
                    yield f"{p.stem}-{k:03d}", blob, str(p.relative_to(root))
            elif p.is_file() and p.stem not in src.skip:
                yield p.stem, p.read_bytes(), str(p.relative_to(root))


def prepare(extracted: dict[str, Path], out: Path) -> list[dict]:
    """Cut out, filter, downscale and split the photos of extracted packages ({package: root}) into out/."""
    import io

    from PIL import Image

    rows = []
    for src in SOURCES:
        root = extracted.get(src.package)
        if root is None:
            continue
        cr = next(iter(sorted(root.glob(f"usr/share/doc/{src.package}/copyright"))), None)
        text = cr.read_text(errors="replace") if cr else ""
        if cr:
            (out / "licenses").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cr, out / "licenses" / f"{src.package}.copyright")
        for name, blob, rel in _candidates(src, root):
            try:
                im = Image.open(io.BytesIO(blob))
                im.load()
            except Exception:  # noqa: BLE001 - a file Pillow cannot read is not a photo we can use
                continue
            if min(im.size) < MIN_SIDE:
                continue
            small = downscale(im.convert("RGB"))
            key = f"{src.package}/{name}"
            split = "heldout" if is_heldout(key) else "train"
            dest = out / split / src.package / f"{name}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as tmp:
                small.save(tmp, format="PNG")
            rows.append({"file": str(dest.relative_to(out)), "package": src.package, "source": rel,
                         "original_size": list(im.size), "size": list(small.size), "split": split,
                         "licence": licence_for(text, rel, Path(rel).stem if src.rcc else None)})
    return rows


def fetch(out: Path, debs: Path | None = None) -> dict:
    """Download the packages (or use .deb files already in `debs`), extract them and prepare out/; the manifest."""
    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix="aeflow-photos-"))
    debs = Path(debs) if debs else work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    try:
        extracted = {}
        for src in SOURCES:
            found = sorted(debs.glob(f"{src.package}_*.deb"))
            if not found:
                subprocess.run(["apt-get", "download", src.package], cwd=debs, check=True, capture_output=True)
                found = sorted(debs.glob(f"{src.package}_*.deb"))
            root = work / "x" / src.package
            root.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(root)], check=True)
            extracted[src.package] = root
        rows = prepare(extracted, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = {"photos": rows, "train": sum(r["split"] == "train" for r in rows),
                "heldout": sum(r["split"] == "heldout" for r in rows), "reserved_never_loaded": sorted(
                    RESERVED_PACKAGES), "rule": f"held out: sha256('package/name') % {HELDOUT_EVERY} == 0"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def sources_of(photos: Path, split: str = "train") -> dict[str, dict]:
    """{package: {"photos": count, "licences": [...]}} of one split of a fetched folder (its manifest.json)."""
    rows = json.loads((Path(photos) / "manifest.json").read_text())["photos"]
    out: dict[str, dict] = {}
    for r in rows:
        if r["split"] != split:
            continue
        e = out.setdefault(r["package"], {"photos": 0, "licences": set()})
        e["photos"] += 1
        e["licences"].add(r["licence"])
    return {k: {"photos": v["photos"], "licences": sorted(v["licences"])} for k, v in sorted(out.items())}


def main(argv: list[str] | None = None) -> int:
    """python -m models.photos fetch DIR [--debs DIR]."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m models.photos", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and prepare the photos into DIR/train and DIR/heldout")
    f.add_argument("dir", type=Path)
    f.add_argument("--debs", type=Path, default=None, help="a folder of already downloaded .deb files")
    args = ap.parse_args(argv)
    m = fetch(args.dir, args.debs)
    print(f"{m['train']} training and {m['heldout']} held-out photos in {args.dir} (manifest.json, licenses/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
