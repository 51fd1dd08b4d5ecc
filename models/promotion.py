"""The one promotion rule: a version takes `production` only if its main metric is at least as good, on the same data.

Used by `aeflow train --promote` (models/build.py) and the Prefect train flow alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """Outcome of the gate: promote or not, why, and the two numbers compared."""

    promote: bool
    reason: str
    metric: str
    higher_is_better: bool
    new_value: float | None
    prod_value: float | None


def main_metric(kind: str) -> tuple[str, bool]:
    """(metric key, higher_is_better) of a model kind, from models.evaluate.MAIN_METRIC."""
    from models.evaluate import MAIN_METRIC

    if kind not in MAIN_METRIC:
        raise ValueError(f"no main metric for kind {kind!r} (known: {', '.join(sorted(MAIN_METRIC))})")
    return MAIN_METRIC[kind]


def _value(metrics: dict | None, key: str) -> float | None:
    v = (metrics or {}).get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def decide_promotion(kind: str, new_metrics: dict, prod_metrics: dict | None,
                     metric: tuple[str, bool] | None = None) -> Decision:
    """Promote when there is no production model, or when the new main metric is at least as good.

    Both metric dicts must come from the same evaluation data (the caller evaluates the production
    checkpoint on the new model's evaluation data). `metric` overrides the kind's main metric.
    """
    key, higher = metric or main_metric(kind)
    new, prod = _value(new_metrics, key), _value(prod_metrics, key)
    if prod_metrics is None:
        return Decision(True, "no production version yet", key, higher, new, None)
    if new is None:
        return Decision(False, f"the new model has no usable {key!r} metric", key, higher, new, prod)
    if prod is None:
        # Cannot compare on the same data: keep what is in production (a person can move the alias).
        return Decision(False, f"the production version could not be scored ({key!r} missing) on this data; "
                        "keeping it", key, higher, new, None)
    word, op = ("higher", ">=") if higher else ("lower", "<=")
    if (new >= prod) if higher else (new <= prod):
        return Decision(True, f"{key} {new:.4g} {op} production {prod:.4g} ({word} is better)",
                        key, higher, new, prod)
    return Decision(False, f"{key} {new:.4g} is worse than production {prod:.4g} ({word} is better)",
                    key, higher, new, prod)


def gate(store, name: str, kind: str, checkpoint, data: str, own_metrics: dict, seed: int = 0,
         limit: int | None = None, evaluate=None) -> tuple[Decision, int | None, dict, dict | None]:
    """(decision, production version, new metrics, production metrics) for a new checkpoint of `name`.

    With no production version the new one wins on its own validation metrics (`own_metrics`). Otherwise
    both checkpoints are scored on the same data (the new model's data spec, every image of it); a
    production version without its checkpoint cannot be scored, and is kept. `evaluate(checkpoint, data,
    seed, limit)` defaults to models.evaluate.evaluate_model (the train flow passes its task).
    """
    from pathlib import Path

    if evaluate is None:
        from models.evaluate import evaluate_model

        def evaluate(ckpt, d, s, lim):
            return evaluate_model(Path(ckpt), data=d, seed=s, limit=lim)

    version = store.aliases(name).get("production")
    if version is None:
        return decide_promotion(kind, own_metrics, None), None, own_metrics, None
    new = evaluate(checkpoint, data, seed, limit)
    prod_ckpt = Path(store.get(name, version).path) / "checkpoint.pt"
    prod = evaluate(str(prod_ckpt), data, seed, limit) if prod_ckpt.is_file() else {}
    return decide_promotion(kind, new, prod), version, new, prod
