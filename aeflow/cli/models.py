"""`aeflow train KIND` and `aeflow models list|show|alias` (torch is imported only when a model is trained)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from aeflow.errors import UsageError

_CHOICES = {"scale": (2, 4)}


def _boolean(text: str) -> bool:
    """yes/no on the command line: true, false, 1, 0, yes, no."""
    v = text.strip().lower()
    if v not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return v in ("true", "1", "yes")


_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "bool": _boolean}
_HELP = {
    "data": "a folder of images, builtin:photos, builtin:mnist or builtin:digits",
    "latent_dim": "latent size of ae/vae/conv-vae/aae (default: the model's: 32, 2, 16, 2)",
    "prior": "aae: the latent prior: gaussian, mixture (10 Gaussians on a circle) or mixture-labels "
             "(each class its own component)",
    "scale": "upscale factor", "patch_size": "side of the training patch (image models)",
    "sigma_min": "denoise: lowest noise sigma, 0-255 scale", "sigma_max": "denoise: highest noise sigma",
    "patience": "epochs without a better validation loss before stopping",
    "steps_per_epoch": "batches per epoch (image models)",
    "size": "model preset: tiny, small, base; unet (denoise: the 3-scale U-Net), resnet (upscale: residual blocks)",
    "loss": "denoise/upscale: mse or l1 between the output and the clean image",
    "limit": "use at most this many images or samples", "beta": "weight of the KL term (vae, conv-vae)",
    "synthetic": "denoise/upscale: add this many generated dead-leaves images to the training split",
    "lr_schedule": "constant, or cosine decay to 0 over all epochs",
    "dilation": "denoise: dilate the convs 1,2,..,N,..,2,1 (wider receptive field, same cost)",
    "contrast": "photo-ae: weight of the contrastive (InfoNCE) term between two edited views",
    "mirror": "photo-ae: encode each image together with its mirror image, so both get one code (true/false)",
    "same_photo": "photo-ae: photos per batch that give five rows each (the photo and its quarters), so regions "
                  "of one photo are told apart",
}


def _store(args):
    from aeflow.store import ModelStore

    return ModelStore(args.store)


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, metavar="DIR", help="model store (default: $AEFLOW_HOME or ./aeflow-store)")


def add_commands(sub) -> None:
    """Add the `train` and `models` verbs."""
    from models.train import DEVICES, KINDS, LOSSES, LR_SCHEDULES, PRIORS, SIZES, TrainSettings

    choices = dict(_CHOICES, prior=PRIORS, size=SIZES, device=DEVICES, lr_schedule=LR_SCHEDULES, loss=LOSSES)

    t = sub.add_parser("train", help="train a model, export it to ONNX and register it in the store",
                       description="Train KIND on --data, evaluate it, draw its pictures, export model.onnx and "
                                   "register it as the next version of --name.")
    t.add_argument("kind", choices=KINDS)
    # One flag per TrainSettings field, so the CLI and the settings cannot drift apart.
    for f in dataclasses.fields(TrainSettings):
        if f.name == "kind":
            continue
        t.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_TYPES[str(f.type)], default=f.default,
                       choices=choices.get(f.name), help=(_HELP.get(f.name, "") + f" (default: {f.default})").strip())
    _add_store(t)
    t.add_argument("--name", default=None, help="store name (default: the kind; upscale-x2 / upscale-x4)")
    t.add_argument("--resume", type=Path, default=None, metavar="PATH", help="continue from this last.pt")
    t.add_argument("--workdir", type=Path, default=None,
                   help="checkpoints folder (default: STORE/.work/NAME); an interrupted run there "
                        "resumes when the same command runs again")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("models", help="list, show and alias stored models")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = msub.add_parser("list", help="table of stored models")
    _add_store(p)
    p.set_defaults(func=cmd_list)
    p = msub.add_parser("show", help="the card of NAME[:VERSION|:ALIAS] and its pictures")
    p.add_argument("spec", metavar="NAME[:VERSION|:ALIAS]")
    p.add_argument("--json", action="store_true", help="print the whole card as JSON")
    _add_store(p)
    p.set_defaults(func=cmd_show)
    p = msub.add_parser("alias", help="point ALIAS (e.g. production) at NAME:VERSION")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("alias")
    _add_store(p)
    p.set_defaults(func=cmd_alias)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _main_metric(card: dict) -> str:
    mm = card.get("main_metric") or {}
    return f"{mm['name']}={_fmt(mm.get('value'))}" if mm.get("name") else "-"


def cmd_train(args) -> int:
    """Train, evaluate, export, register; print where the model went and its main metrics."""
    from models.build import build_and_register
    from models.data import DataError
    from models.train import TrainSettings

    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    try:
        settings = TrainSettings(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.resume is not None and not args.resume.is_file():
        raise UsageError(f"--resume {args.resume}: no such checkpoint")
    store = _store(args)
    try:
        ref = build_and_register(settings, store, name=args.name, resume=args.resume, workdir=args.workdir)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    card = ref.card
    print(f"registered {ref.id} ({settings.kind}) in {ref.path}")
    print(f"  main metric: {_main_metric(card)}")
    shown = {k: v for k, v in card.get("metrics", {}).items() if isinstance(v, (int, float)) and v is not None}
    print("  metrics: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
    tr = card.get("training", {})
    print(f"  trained {tr.get('epochs')} epochs in {_fmt(tr.get('seconds'))} s on {tr.get('device')}")
    return 0


def cmd_list(args) -> int:
    """Table: name, version, aliases, kind, main metric, created."""
    store = _store(args)
    rows = [("NAME", "VERSION", "ALIASES", "KIND", "MAIN METRIC", "CREATED")]
    for name in store.names():
        aliases = store.aliases(name)
        for v in store.versions(name):
            card = store.get(name, v).card
            tags = ",".join(sorted(a for a, av in aliases.items() if av == v)) or "-"
            rows.append((name, str(v), tags, card.get("kind", "?"), _main_metric(card), card.get("created", "-")))
    if len(rows) == 1:
        print(f"no models in {store.root}; train one with `aeflow train KIND`")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_show(args) -> int:
    """The card of one model version, readable, with the paths of its pictures."""
    store = _store(args)
    ref = store.resolve(args.spec)
    card = ref.card
    if args.json:
        print(json.dumps(card, indent=2, sort_keys=True))
        return 0
    aliases = sorted(a for a, v in store.aliases(ref.name).items() if v == ref.version)
    data = card.get("data", {})
    print(f"{ref.id}  ({card.get('kind')})  aliases: {', '.join(aliases) or '-'}")
    print(f"  path:         {ref.path}")
    print(f"  created:      {card.get('created')}   code: {card.get('code_version')}")
    print(f"  data:         {data.get('spec')} - {data.get('description')}")
    print(f"  data hash:    {data.get('hash')}")
    print(f"  main metric:  {_main_metric(card)}")
    print("  metrics:")
    for k, v in sorted(card.get("metrics", {}).items()):
        print(f"    {k:<16} {_fmt(v)}")
    settings = card.get("settings", {})
    print("  settings:     " + ", ".join(f"{k}={_fmt(v)}" for k, v in settings.items()))
    tr = card.get("training", {})
    if tr:
        print(f"  training:     {tr.get('epochs')} epochs (best {tr.get('best_epoch')}) in {_fmt(tr.get('seconds'))} s"
              f" on {tr.get('device')}")
    onnx = card.get("onnx", {})
    for io in ("inputs", "outputs"):
        for t in onnx.get(io, []):
            print(f"  onnx {io[:-1]:<7} {t.get('name')} {t.get('dtype')} {t.get('shape')}")
    print(f"  parity:       {json.dumps(card.get('parity', {}), sort_keys=True)}")
    for fname, sha in sorted(card.get("files", {}).items()):
        print(f"  file:         {ref.path / fname}  sha256 {sha[:16]}…")
    for pic in card.get("pictures", []):
        print(f"  picture:      {ref.path / pic}")
    return 0


def cmd_alias(args) -> int:
    """Point ALIAS at NAME:VERSION."""
    store = _store(args)
    store.set_alias(args.name, args.alias, args.version)
    print(f"{args.name}:{args.alias} -> {args.name}:{args.version}")
    return 0
