"""Train the default models that ship inside the package (aeflow/shipped) with the training flow, and copy them there.

    python -m flows.ship [NAME ...] [--store DIR] [--device auto|cpu|cuda]

Each recipe below is the exact training-flow call; the card of the shipped copy records it, the command,
the machine and the time. Shipped folders hold the ONNX files, the card and the pictures, not the
torch checkpoint (the jobs never need it, and it would triple the package size).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from aeflow.store import SHIPPED_ROOT, ModelStore, update_card

# name -> train_flow parameters. Sized for 2 CPU cores: the digit models and the upscalers take minutes each (the
# conv-vae 44 min), the photo-ae half an hour, the denoiser about an hour and a half.
RECIPES: dict[str, dict] = {
    # lr 2e-3 collapses the ae to the mean image on MNIST (val MSE 0.110 after 3 epochs vs 0.030 at 1e-3)
    "ae": dict(kind="ae", data="builtin:mnist", epochs=40, batch_size=64, lr=1e-3, lr_schedule="cosine",
               patience=40),
    # a 2-d latent needs many steps to pull the classes apart: 40 epochs of 64 left 3,5,8 on one blob (kNN 0.47)
    "conv-vae": dict(kind="conv-vae", data="builtin:mnist", latent_dim=2, epochs=150, batch_size=32, lr=1e-3,
                     lr_schedule="cosine", patience=150),
    # the paper's mixture of 10 Gaussians on a circle, unsupervised; the best validation reconstruction keeps
    # the prior matched (MMD at its two-sample floor on the held-out digits, docs/quality.md)
    "aae": dict(kind="aae", data="builtin:mnist", latent_dim=2, prior="mixture", epochs=100, batch_size=64,
                lr=1e-3, lr_schedule="cosine", patience=100),
    # the photo embedding model: edited views of the Debian photos (python -m models.photos fetch PHOTOS);
    # "photos:train" stands for PHOTOS/train (--photos). Contrast 0.5 over 0.1 (25 epochs): validation copy
    # recall at 90% precision 0.964 against 0.944; four photos per batch giving their whole and quarters
    # (same_photo=4) over none: 0.973 against 0.964, reconstruction MSE 0.030 against 0.033
    "photo-ae": dict(kind="photo-ae", data="photos:train", epochs=30, steps_per_epoch=100, batch_size=32, lr=1e-3,
                     lr_schedule="cosine", patience=30, contrast=0.5, same_photo=4),
    # one blind model for sigma 5..55: the 3-scale U-Net on the Debian photos ("photos:train") and dead-leaves
    # images (edges at every scale); L1 loss, 96px patches, batch 16
    "denoise": dict(kind="denoise", data="photos:train", size="unet", synthetic=48, epochs=45, steps_per_epoch=100,
                    batch_size=16, patch_size=96, sigma_min=5.0, sigma_max=55.0, lr=1e-3, lr_schedule="cosine",
                    patience=45, loss="l1"),
    "upscale-x2": dict(kind="upscale", scale=2, data="builtin:photos", epochs=30, steps_per_epoch=100,
                       batch_size=32, patch_size=64, lr=1e-3, lr_schedule="cosine", patience=30),
    "upscale-x4": dict(kind="upscale", scale=4, data="builtin:photos", epochs=30, steps_per_epoch=100,
                       batch_size=32, patch_size=96, lr=1e-3, lr_schedule="cosine", patience=30),
}
# name -> quantization-aware fine-tuning (models.qat.QatSettings) for the int8 graph, run where post-training int8
# loses more than the 0.1 dB gate
INT8_QAT: dict[str, dict] = {"denoise": dict(steps=300)}
SHIPPED_FILES = (".onnx", ".png", ".json")


def machine() -> str:
    """A one-line description of where the training ran."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, {gpu}")


def training_seconds(card: dict) -> float | None:
    """Seconds a version trained for: its epochs' own times (a run resumed to be rebuilt times only its last leg)."""
    t = card.get("training") or {}
    epochs = sum(h.get("seconds", 0.0) for h in t.get("history") or [])
    return max(epochs, t.get("seconds") or 0.0) or None


def copy_shipped(src: Path, dest: Path) -> Path:
    """Copy a store version folder into dest/1 (ONNX, card, pictures only), replacing what was there."""
    target = dest / "1"
    stage = dest / ".staging"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and p.suffix in SHIPPED_FILES:
            shutil.copy2(p, stage / p.name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(stage, target)
    return target


def resolve_recipe(recipe: dict, photos: str | None) -> dict:
    """The train_flow call of a recipe: "photos:SPLIT" becomes PHOTOS/SPLIT (the folder models.photos fetched)."""
    data = recipe.get("data", "")
    if not data.startswith("photos:"):
        return dict(recipe)
    if not photos:
        raise SystemExit("this recipe trains on the Debian photos: run `python -m models.photos fetch DIR`, then "
                         "pass --photos DIR")
    return {**recipe, "data": str(Path(photos) / data.split(":", 1)[1])}


def check_trained_as(card: dict, recipe: dict) -> None:
    """Raise unless a registered version was trained with every setting of the recipe (its card's settings)."""
    settings = card.get("settings", {})
    wrong = {k: (settings.get(k), v) for k, v in recipe.items() if k != "data" and settings.get(k) != v}
    if recipe.get("data") and Path(str(settings.get("data", ""))).resolve() != Path(recipe["data"]).resolve():
        wrong["data"] = (settings.get("data"), recipe["data"])
    if wrong:
        raise SystemExit("that version was not trained with this recipe: "
                         + ", ".join(f"{k}={a!r} (recipe {b!r})" for k, (a, b) in sorted(wrong.items())))


def ship(names: list[str], store: str, device: str = "auto", dest_root: Path = SHIPPED_ROOT,
         photos: str | None = None, reuse: str | None = None) -> list[Path]:
    """Train each named recipe with train_flow into `store`, then copy it to dest_root/NAME/1, recipe on its card.

    With `reuse` (a store spec), the one named recipe is not retrained: that version, whose card must show the
    recipe's settings (e.g. it was trained with the same `aeflow train` call), is shipped instead.
    """

    from flows.train import train_flow

    out = []
    for name in names:
        recipe = RECIPES[name]
        t0 = time.time()
        if reuse:
            ref = ModelStore(store, include_shipped=False).resolve(reuse)
            check_trained_as(ref.card, resolve_recipe(recipe, photos))
            trained_as, wall = ref.id, training_seconds(ref.card)
            command = f"python -m flows.ship {name} --reuse {reuse}"
        else:
            from models.train import TrainSettings

            settings = TrainSettings(**resolve_recipe(recipe, photos), device=device)
            result = train_flow(settings, name=name, store=store, promote=False)
            ref = ModelStore(store, include_shipped=False).resolve(result["model"])
            trained_as, wall, command = result["model"], None, "python -m flows.ship " + name
        target = copy_shipped(ref.path, dest_root / name)
        shipped = {"recipe": recipe, "command": command, "machine": machine(),
                   "wall_seconds": round(wall if wall is not None else time.time() - t0, 1), "trained_as": trained_as}
        if str(recipe.get("data", "")).startswith("photos:") and (Path(photos) / "manifest.json").is_file():
            from models.photos import sources_of

            # which Debian packages the photos came from, how many, under which licences (their copyright files)
            shipped["data_sources"] = sources_of(Path(photos), recipe["data"].split(":", 1)[1])
        update_card(target, {"version": 1, "shipped": shipped})
        if INT8_QAT.get(name):
            from models.qat import QatSettings
            from models.quantize import add_int8_to_folder

            # rebuild the int8 graph, from a fine-tuned copy where post-training int8 fails its gate (card updated)
            add_int8_to_folder(target, qat=QatSettings(**INT8_QAT[name]))
        print(f"shipped {name} -> {target} ({time.time() - t0:.0f} s)", flush=True)
        out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry: python -m flows.ship [NAME ...]."""
    ap = argparse.ArgumentParser(prog="python -m flows.ship", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=[], metavar="NAME",
                    help=f"recipes to train (default: all of {', '.join(RECIPES)})")
    ap.add_argument("--store", default="ship-store", help="store the training flow registers into")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--photos", default=None, help="the folder `python -m models.photos fetch` filled")
    ap.add_argument("--reuse", metavar="SPEC", default=None,
                    help="ship this version of --store (trained with the recipe's settings) instead of training")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    if args.reuse and len(args.names) != 1:
        ap.error("--reuse ships one recipe: name it")
    ship(args.names or list(RECIPES), args.store, args.device, photos=args.photos, reuse=args.reuse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
