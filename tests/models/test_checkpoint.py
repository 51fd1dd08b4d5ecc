"""Checkpoints: round trip for every model, weights_only loading, plain-types-only contents, atomic writes."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from models.checkpoint import CHECKPOINT_KEYS, load_checkpoint, load_model, save_checkpoint
from models.registry import create_model, list_models

RAN = []  # filled if an unpickled object ever executes code


def _mark():
    RAN.append(True)
    return "pwned"


class Payload:
    """Pickles to a call of _mark(): what a malicious checkpoint would do."""

    def __reduce__(self):
        return (_mark, ())


def _input(model):
    cfg = model.cfg
    if hasattr(model, "encode"):
        return torch.rand(2, cfg.channels, cfg.input_size, cfg.input_size)
    return torch.rand(2, cfg.channels, 12, 10)


@pytest.mark.parametrize("kind", list_models())
def test_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    model = create_model(kind, size="tiny")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _input(model)
    out = model(x)
    loss = (out[0] if isinstance(out, tuple) else out).square().mean()
    loss.backward()
    opt.step()  # gives the optimizer real state to save
    path = tmp_path / "ckpt" / "checkpoint.pt"
    save_checkpoint(path, model, optimizer=opt, epoch=3, best_val=0.25,
                    history=[{"epoch": 1, "val": 0.5}, {"epoch": 2, "val": 0.25}],
                    settings={"data": tmp_path / "data", "sizes": (1, 2), "lr": 1e-3})
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left

    ckpt = load_checkpoint(path)
    assert set(ckpt) == set(CHECKPOINT_KEYS)
    assert ckpt["kind"] == kind and ckpt["epoch"] == 3 and ckpt["best_val"] == 0.25
    assert ckpt["settings"] == {"data": str(tmp_path / "data"), "sizes": [1, 2], "lr": 1e-3}
    assert ckpt["history"][1] == {"epoch": 2, "val": 0.25}
    opt2 = torch.optim.Adam(create_model(kind, **ckpt["config"]).parameters())
    opt2.load_state_dict(ckpt["optimizer"])  # the optimizer state is usable for resuming
    want, got = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert set(got) == set(want) and all(torch.equal(got[k]["exp_avg"], want[k]["exp_avg"]) for k in want)

    loaded = load_model(path)
    assert not loaded.training and loaded.cfg == model.cfg and loaded.kind == kind
    model.eval()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for t1, t2 in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.equal(t1, t2)


def test_arbitrary_pickled_object_is_refused(tmp_path):
    model = create_model("denoise", size="tiny")
    path = tmp_path / "evil.pt"
    torch.save({"kind": "denoise", "config": {}, "state_dict": model.state_dict(), "extra": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        load_model(path)
    assert RAN == []


def test_non_plain_settings_fail_at_save_time(tmp_path):
    model = create_model("denoise", size="tiny")
    path = tmp_path / "c.pt"
    with pytest.raises(TypeError, match=r"settings\.bad holds a object"):
        save_checkpoint(path, model, settings={"bad": object()})
    assert not path.exists()


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    model = create_model("denoise", size="tiny")
    path = tmp_path / "c.pt"
    save_checkpoint(path, model, epoch=1)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, epoch=2)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_not_a_checkpoint(tmp_path):
    path = Path(tmp_path) / "x.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not an aeflow checkpoint"):
        load_checkpoint(path)


def test_compiled_model_saves_plain_keys(tmp_path):
    model = create_model("denoise", size="tiny")
    wrapped = torch.nn.Module()
    wrapped._orig_mod = model  # what torch.compile returns: state_dict keys gain an "_orig_mod." prefix
    wrapped.kind, wrapped.cfg = model.kind, model.cfg
    save_checkpoint(tmp_path / "c.pt", wrapped)
    assert set(load_checkpoint(tmp_path / "c.pt")["state_dict"]) == set(model.state_dict())
    assert isinstance(load_model(tmp_path / "c.pt"), type(model))
