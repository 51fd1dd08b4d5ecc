"""Versioned model store: NAME/VERSION/{model.onnx, checkpoint.pt, card.json, pictures}, aliases, sha256 checks.

Torch-free on purpose: the batch jobs (pipeline/) resolve and verify models through it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aeflow.errors import UsageError
from aeflow.files import write_json

CARD = "card.json"
ALIASES = "aliases.json"
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # optional int8 graph of an image2image model (models/quantize.py)
FP16_FILE = "model.fp16.onnx"  # optional fp16 graph of an image2image model, for CUDA (models/half.py)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# Models shipped inside the package: searched after the user's store, so a user's model of the same name wins.
SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"


class StoreError(UsageError):
    """A model spec that cannot be resolved, or a store that cannot be written."""


class ModelIntegrityError(StoreError):
    """A model file whose sha256 does not match its card."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def update_card(version_dir: str | os.PathLike, changes: dict) -> dict:
    """Merge `changes` into the top level of a version folder's card (atomic); the new card.

    For facts learned after registration (a derived graph, a measured threshold, shipping details). The
    sha256 list is the card's own business: a change to "files" must come with the file it names.
    """
    f = Path(version_dir) / CARD
    if not f.is_file():
        raise StoreError(f"no {CARD} in {version_dir}")
    card = {**json.loads(f.read_text()), **changes}
    write_json(f, card)
    return card


def default_root() -> Path:
    """$AEFLOW_HOME if set, else ./aeflow-store."""
    return Path(os.environ.get("AEFLOW_HOME") or "aeflow-store")



@dataclass
class ModelRef:
    """One stored model version; `onnx_path()` verifies its sha256 before handing out the path."""

    name: str
    version: int
    path: Path
    card: dict = field(repr=False)

    @property
    def id(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def sha256(self) -> str:
        return self.card.get("files", {}).get(MODEL_FILE, "")

    def file(self, fname: str = MODEL_FILE, verify: bool = True) -> Path:
        """Path of a stored file; its sha256 is checked against the card when the card lists it."""
        p = self.path / fname
        if not p.is_file():
            raise StoreError(f"{self.id}: missing file {p}")
        expected = self.card.get("files", {}).get(fname)
        if verify:
            if not expected:
                raise ModelIntegrityError(f"{self.id}: card lists no sha256 for {p}; refusing to load it")
            actual = sha256_file(p)
            if actual != expected:
                raise ModelIntegrityError(
                    f"{p}: sha256 mismatch (card says {expected[:12]}…, file is {actual[:12]}…); "
                    "the file was modified or swapped: refusing to load it")
        return p

    def onnx_path(self) -> Path:
        """The verified model.onnx path."""
        return self.file(MODEL_FILE)


class ModelStore:
    """A folder of named, versioned models with aliases (`latest` is implicit, `production` is moved by promotion)."""

    def __init__(self, root: str | os.PathLike | None = None, include_shipped: bool = True):
        self.root = Path(root) if root is not None else default_root()
        self.include_shipped = include_shipped

    # ---- reading -------------------------------------------------------------------------
    def _roots(self) -> list[Path]:
        roots = [self.root]
        if self.include_shipped and SHIPPED_ROOT.is_dir() and SHIPPED_ROOT.resolve() != self.root.resolve():
            roots.append(SHIPPED_ROOT)
        return roots

    def _name_dir(self, name: str) -> Path | None:
        for r in self._roots():
            if (r / name).is_dir() and self._versions_in(r / name):
                return r / name
        return None

    @staticmethod
    def _versions_in(d: Path) -> list[int]:
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / CARD).is_file())

    def names(self) -> list[str]:
        """All model names, user store first, then shipped ones not shadowed."""
        seen: dict[str, None] = {}
        for r in self._roots():
            if r.is_dir():
                for p in sorted(r.iterdir()):
                    if p.is_dir() and not p.name.startswith(".") and self._versions_in(p):
                        seen.setdefault(p.name, None)
        return list(seen)

    def versions(self, name: str) -> list[int]:
        d = self._name_dir(name)
        return self._versions_in(d) if d else []

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version, `latest` included."""
        d = self._name_dir(name)
        if d is None:
            return {}
        f = d / ALIASES
        out = json.loads(f.read_text()) if f.is_file() else {}
        vs = self._versions_in(d)
        if vs:
            out["latest"] = vs[-1]
        return {k: int(v) for k, v in out.items()}

    def get(self, name: str, version: int) -> ModelRef:
        d = self._name_dir(name)
        if d is None or not (d / str(version) / CARD).is_file():
            raise StoreError(f"no model {name}:{version} in {self.root}")
        card = json.loads((d / str(version) / CARD).read_text())
        return ModelRef(name=name, version=int(version), path=d / str(version), card=card)

    def resolve(self, spec: str) -> ModelRef:
        """NAME (production if set, else latest), NAME:VERSION, NAME:ALIAS, or a path to a version folder/model.onnx."""
        p = Path(spec)
        if p.exists() and (p.is_file() or (p / CARD).is_file()):
            vdir = p.parent if p.is_file() else p
            if not (vdir / CARD).is_file():
                raise StoreError(f"{spec}: no {CARD} beside it; models load only with a card holding their sha256")
            card = json.loads((vdir / CARD).read_text())
            return ModelRef(name=card.get("name", vdir.parent.name), version=int(card.get("version", 0)),
                            path=vdir, card=card)
        name, _, tag = spec.partition(":")
        if not name or not _NAME_RE.match(name):
            raise StoreError(f"bad model spec {spec!r}: use NAME, NAME:VERSION, NAME:ALIAS or a path")
        if self._name_dir(name) is None:
            known = ", ".join(self.names()) or "none"
            raise StoreError(f"no model named {name!r} in {self.root} (known: {known}); train one with `aeflow train`")
        aliases = self.aliases(name)
        if not tag:
            version = aliases.get("production", aliases["latest"])
        elif tag.isdigit():
            version = int(tag)
        elif tag in aliases:
            version = aliases[tag]
        else:
            raise StoreError(f"{name} has no alias {tag!r} (aliases: {', '.join(sorted(aliases))})")
        return self.get(name, version)

    def next_version(self, name: str) -> int:
        """The version number the next register(name) will most likely get (for ONNX metadata)."""
        d = self.root / name
        vs = self._versions_in(d) if d.is_dir() else []
        return (vs[-1] + 1) if vs else 1

    # ---- writing -------------------------------------------------------------------------
    def register(self, name: str, src_dir: str | os.PathLike, card: dict, move: bool = False) -> ModelRef:
        """Copy a built model folder (must hold model.onnx) into the store as the next version.

        The sha256 of every .onnx file is written into the card. The version folder appears
        atomically (staged, then renamed), and `latest` then points at it.
        """
        if not _NAME_RE.match(name):
            raise StoreError(f"bad model name {name!r}")
        src = Path(src_dir)
        if not (src / MODEL_FILE).is_file():
            raise StoreError(f"{src} holds no {MODEL_FILE}")
        ndir = self.root / name
        ndir.mkdir(parents=True, exist_ok=True)
        stage = ndir / f".staging-{uuid.uuid4().hex}"
        if move:
            shutil.move(str(src), stage)
        else:
            shutil.copytree(src, stage)
        try:
            files = {p.name: sha256_file(p) for p in sorted(stage.iterdir()) if p.suffix == ".onnx"}
            while True:
                vs = self._versions_in(ndir)
                version = (vs[-1] + 1) if vs else 1
                full = dict(card)
                full.update(name=name, version=version, files={**card.get("files", {}), **files})
                full.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
                write_json(stage / CARD, full)
                try:
                    os.rename(stage, ndir / str(version))  # fails if another writer took this version
                    break
                except OSError:
                    if not (ndir / str(version)).exists():
                        raise
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return self.get(name, version)

    def update_card(self, spec: str, changes: dict) -> ModelRef:
        """Merge `changes` into the card of a version of this store (not a shipped one); the updated ref."""
        ref = self.resolve(spec)
        if not ref.path.resolve().is_relative_to(self.root.resolve()):
            raise StoreError(f"{ref.id} is not in {self.root} (shipped models are read-only)")
        card = update_card(ref.path, changes)
        return ModelRef(ref.name, ref.version, ref.path, card)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point alias at version (atomic). `latest` is implicit and cannot be set."""
        if alias == "latest" or not _ALIAS_RE.match(alias):
            raise StoreError(f"cannot set alias {alias!r}")
        ndir = self.root / name
        if not (ndir / str(version) / CARD).is_file():
            raise StoreError(f"no model {name}:{version} in {self.root}")
        f = ndir / ALIASES
        data = json.loads(f.read_text()) if f.is_file() else {}
        data[alias] = int(version)
        write_json(f, data)
