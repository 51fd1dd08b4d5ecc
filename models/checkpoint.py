"""Checkpoints: torch.save of plain types and tensors only, loaded with weights_only=True; a path rebuilds a model."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from aeflow.files import atomic_path

CHECKPOINT_KEYS = ("kind", "config", "state_dict", "optimizer", "epoch", "best_val", "history", "settings")


def _plain(obj: Any, where: str) -> Any:
    """`obj` as plain Python types (dict/list/str/int/float/bool/None/tensor) that weights_only=True can load."""
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj), where)
    if isinstance(obj, dict):
        # keys stay as they are (the optimizer's state is keyed by int parameter ids)
        bad = [k for k in obj if not isinstance(k, (str, int, float, bool, type(None)))]
        if bad:
            raise TypeError(f"checkpoint {where} has a key of type {type(bad[0]).__name__}; use str or int keys")
        return {k: _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy scalars
        return obj.item()
    raise TypeError(f"checkpoint {where} holds a {type(obj).__name__}, which a weights_only load would refuse; "
                    f"store plain types (dict, list, str, int, float, bool, None) or tensors")


def save_checkpoint(path: str | os.PathLike, model, *, optimizer=None, epoch: int = 0,
                    best_val: float | None = None, history: list | None = None,
                    settings: dict | None = None) -> Path:
    """Write the model's kind, config, weights and training state to `path` atomically; returns the path."""
    import torch

    path = Path(path)
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model: save the plain module's keys
    ckpt = {
        "kind": model.kind,
        "config": dataclasses.asdict(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": _plain(optimizer.state_dict(), "optimizer") if optimizer is not None else None,
        "epoch": int(epoch),
        "best_val": None if best_val is None else float(best_val),
        "history": _plain(history if history is not None else [], "history"),
        "settings": _plain(settings if settings is not None else {}, "settings"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the same folder, then os.replace: a crash never leaves a half-written checkpoint.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """The checkpoint dict, loaded with weights_only=True (files holding arbitrary pickled objects are refused)."""
    import torch

    ckpt = torch.load(Path(path), map_location=map_location, weights_only=True)
    missing = [k for k in ("kind", "config", "state_dict") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not an aeflow checkpoint (missing {', '.join(missing)})")
    return ckpt


def load_model(path: str | os.PathLike, map_location: str = "cpu"):
    """Rebuild the model from the checkpoint file alone (kind + config + weights), in eval mode."""
    from models.registry import create_model

    ckpt = load_checkpoint(path, map_location=map_location)
    model = create_model(ckpt["kind"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location).eval()
