"""Model registry: a decorator fills a dict of kind -> model class; create_model builds any of them."""
from __future__ import annotations

import dataclasses
from typing import Any

# kind -> model class. Each class carries `kind` (str), `Config` (its @dataclass) and `SIZES` (named sizes).
_MODELS: dict[str, type] = {}


def register_model(cls: type) -> type:
    """Class decorator: register a model class under its `kind`; the class needs `kind`, `Config`, `SIZES`."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} needs a class attribute `kind` (str) to be registered")
    if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        raise TypeError(f"{cls.__name__} needs a class attribute `Config` that is a @dataclass")
    if kind in _MODELS and _MODELS[kind] is not cls:
        raise ValueError(f"model kind {kind!r} is already registered by {_MODELS[kind].__name__}")
    _MODELS[kind] = cls
    return cls


def _load_nets() -> None:
    # Importing models.nets runs every @register_model; done lazily so `import models.registry` stays cheap.
    import models.nets  # noqa: F401


def _model_class(kind: str) -> type:
    _load_nets()
    try:
        return _MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(_MODELS))}") from None


def list_models() -> list[str]:
    """The registered model kinds, sorted."""
    _load_nets()
    return sorted(_MODELS)


def make_config(kind: str, size: str | None = None, **cfg: Any):
    """Build the config dataclass of `kind`: defaults, then the named `size`, then `cfg` (unknown keys: TypeError)."""
    cls = _model_class(kind)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise TypeError(f"unknown config key(s) for model {kind!r}: {', '.join(unknown)}; "
                        f"valid keys: {', '.join(sorted(fields))}")
    values: dict[str, Any] = {}
    if size is not None:
        if size not in cls.SIZES:
            raise ValueError(f"unknown size {size!r} for model {kind!r}; sizes: {', '.join(cls.SIZES)}")
        values.update(cls.SIZES[size])
    values.update(cfg)
    return cls.Config(**values)


def create_model(kind: str, size: str | None = None, **cfg: Any):
    """Build a model of `kind` from its config (named `size`, then `cfg` overrides); keeps `.cfg` and `.kind`."""
    return _model_class(kind)(make_config(kind, size, **cfg))
