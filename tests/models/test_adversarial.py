"""The adversarial autoencoder: three optimizers that really step, its priors, a latent that moves to the prior."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.adversarial import PhaseOptimizers, mmd2, prior_match, reconstruction_loss, train_step
from models.registry import create_model
from models.train import TrainSettings, train_model

TINY_DIGITS = dict(data="builtin:digits", size="tiny", limit=150, batch_size=32)


def _params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module) -> bool:
    return all(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def _steps(opt: torch.optim.Optimizer) -> list[int]:
    return [int(opt.state[p]["step"]) for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("prior", ["gaussian", "mixture", "mixture-labels"])
def test_each_phase_steps_its_own_optimizer(prior):
    """One train_step moves encoder, decoder and discriminator, and each of the three Adams took exactly one step.

    The lesson's notebook built a discriminator optimizer that never stepped: its parameters stayed as
    initialised, which fails the first assertion below.
    """
    torch.manual_seed(0)
    model = create_model("aae", "tiny", prior=prior, latent_dim=2)
    opt = PhaseOptimizers(model, 1e-3)
    before = {k: _params(getattr(model, k)) for k in ("encoder", "decoder", "discriminator")}
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    stats = train_step(model, opt, x, y)
    for part in ("discriminator", "decoder", "encoder"):
        assert _changed(before[part], getattr(model, part)), f"{part} did not change"
    for phase in ("reconstruction", "discriminator", "regularization"):
        assert _steps(opt[phase]) and set(_steps(opt[phase])) == {1}, phase
    # the phases own disjoint parts: the critic never moves the autoencoder, and the reverse
    own = {id(p) for p in model.discriminator.parameters()}
    assert own == {id(p) for g in opt["discriminator"].param_groups for p in g["params"]}
    assert not own & {id(p) for g in opt["reconstruction"].param_groups for p in g["params"]}
    assert not own & {id(p) for g in opt["regularization"].param_groups for p in g["params"]}
    assert all(p.grad is None for p in model.discriminator.parameters())  # nothing left over for the next step
    assert set(stats) == {"loss", "d_loss", "g_loss", "d_acc"} and all(math.isfinite(v) for v in stats.values())


def test_mixture_priors_put_samples_on_their_components():
    torch.manual_seed(0)
    m = create_model("aae", "tiny", prior="mixture", latent_dim=3)
    z = m.sample_prior(4000, generator=torch.Generator().manual_seed(1))
    r = z[:, :2].norm(dim=1)
    assert abs(float(r.mean()) - m.cfg.radius) < 0.1 and abs(float(z[:, 2].std()) - 1) < 0.1
    angles = torch.atan2(z[:, 1], z[:, 0]) % (2 * math.pi)
    comp = torch.round(angles / (2 * math.pi / 10)) % 10
    assert len(torch.unique(comp)) == 10  # every component is used
    ml = create_model("aae", "tiny", prior="mixture-labels", latent_dim=2)
    labels = torch.arange(1000) % 10
    zl = ml.sample_prior(1000, labels, generator=torch.Generator().manual_seed(2))
    got = torch.round((torch.atan2(zl[:, 1], zl[:, 0]) % (2 * math.pi)) / (2 * math.pi / 10)) % 10
    assert float((got == labels).float().mean()) > 0.95  # label k is drawn from component k
    with pytest.raises(ValueError, match="label"):
        ml.sample_prior(5)
    with pytest.raises(ValueError, match="labels must be in"):
        ml.discriminate(torch.zeros(2, 2), torch.tensor([0, 10]))


@pytest.mark.parametrize("prior", ["gaussian", "mixture"])
def test_prior_density_integrates_to_one(prior):
    m = create_model("aae", "tiny", prior=prior, latent_dim=2)
    g = torch.linspace(-8, 8, 321)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    dens = m.prior_density(torch.stack([gx.ravel(), gy.ravel()], 1))
    assert float(dens.sum()) * float(g[1] - g[0]) ** 2 == pytest.approx(1.0, abs=0.01)


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    same, shifted = mmd2(a, b), mmd2(a, b + 1.0)
    assert abs(same) < 0.01 and shifted > 0.1 and shifted > 20 * abs(same)


def test_settings_and_data_errors():
    with pytest.raises(ValueError, match="prior"):
        TrainSettings(kind="aae", prior="laplace")
    with pytest.raises(ValueError, match="aae only"):
        TrainSettings(kind="vae", prior="mixture")
    with pytest.raises(ValueError, match="latent_dim >= 2"):
        create_model("aae", prior="mixture", latent_dim=1)


def test_a_label_prior_needs_labelled_data(tmp_path):
    from PIL import Image

    from tests.conftest import make_photo

    for i in range(3):
        Image.fromarray(make_photo(32, 32, seed=i)).save(tmp_path / f"{i}.png")
    s = TrainSettings(kind="aae", data=str(tmp_path), prior="mixture-labels", epochs=1, size="tiny")
    with pytest.raises(ValueError, match="has no labels"):
        train_model(s, tmp_path / "run", progress=False)


def test_training_resumes_with_all_three_optimizers(tmp_path):
    from models.checkpoint import load_checkpoint

    first = train_model(TrainSettings(kind="aae", epochs=1, prior="mixture-labels", **TINY_DIGITS),
                        tmp_path / "a", progress=False)
    h = first.history[0]
    assert {"d_loss", "g_loss", "d_acc"} <= set(h) and 0 <= h["d_acc"] <= 1
    ck = load_checkpoint(first.last_checkpoint)
    assert set(ck["optimizer"]) == {"reconstruction", "discriminator", "regularization"}
    again = train_model(TrainSettings(kind="aae", epochs=2, prior="mixture-labels", **TINY_DIGITS),
                        tmp_path / "b", resume=first.last_checkpoint, progress=False)
    assert [e["epoch"] for e in again.history] == [1, 2] and again.history[0] == h
    steps = load_checkpoint(again.last_checkpoint)["optimizer"]["discriminator"]["state"][0]["step"]
    assert int(steps) == 2 * 5  # 135 training digits in batches of 32, two epochs: the state travelled


def _digits():
    from models.data import resolve_data

    ds = resolve_data("builtin:digits", "aae", input_size=28, channels=1, val_fraction=0.3, seed=0, limit=400)
    return [torch.from_numpy(np.asarray(a)) for a in (ds.x_train, ds.y_train, ds.x_val, ds.y_val)]


def _fit(prior: str, adversarial: bool, seed: int, steps: int = 1000) -> tuple[dict, dict]:
    """prior_match of a tiny aae on held-out digits before and after `steps` batches (all phases, or recon. only)."""
    x, y, xv, yv = _digits()
    torch.manual_seed(seed)
    model = create_model("aae", "tiny", prior=prior, latent_dim=2)
    opt = PhaseOptimizers(model, 1e-3)
    with torch.no_grad():
        before = prior_match(model, model.encode(xv), yv, seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (32,), generator=gen)
        if adversarial:
            train_step(model, opt, x[idx], y[idx])
        else:
            opt["reconstruction"].zero_grad()
            reconstruction_loss(model, x[idx]).backward()
            opt["reconstruction"].step()
    with torch.no_grad():
        return before, prior_match(model, model.encode(xv), yv, seed)


@pytest.mark.parametrize("prior", ["gaussian", "mixture"])
def test_training_moves_the_latent_toward_the_prior(prior):
    """A thousand steps on 280 digits: the held-out latents' MMD to the prior falls by 10x; without the
    adversarial phases (the same autoencoder, reconstruction only) it does not."""
    before, after = _fit(prior, adversarial=True, seed=0)
    _, plain = _fit(prior, adversarial=False, seed=0)
    assert after["prior_mmd"] < 0.1 * before["prior_mmd"]
    assert after["prior_mmd"] < 0.2 * plain["prior_mmd"]
    assert after["latent_cov_err"] < 0.5 * before["latent_cov_err"]
    assert 0.3 < after["disc_acc"] < 0.9  # the critic is kept guessing, not winning outright
