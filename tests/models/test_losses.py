"""The VAE's KL term against closed-form values, torch.distributions and a Monte-Carlo estimate; the full loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import kl_divergence, vae_loss


def _params(n=4, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(n, d, generator=g, dtype=torch.float64)  # log sigma^2 in about [-2, 2]
    return mu, logvar


def test_kl_closed_form_catches_log_sigma_mixup():
    # mu = 0, sigma^2 = 4: KL = 1/2 (sigma^2 - 1 - log sigma^2) = 1/2 (3 - log 4) per dim.
    logvar = torch.full((1, 2), math.log(4.0))
    kl = kl_divergence(torch.zeros(1, 2), logvar)
    assert kl.shape == (1,)
    assert kl.item() == pytest.approx(2 * 0.5 * (3 - math.log(4.0)), rel=1e-6)  # 1.6137
    # treating logvar as log sigma would give sigma^2 = 16: 2 * 1/2 (15 - log 16) = 12.23
    assert abs(kl.item() - (15 - math.log(16.0))) > 10
    assert kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max() == 0  # q = p


def test_kl_matches_torch_distributions():
    mu, logvar = _params()
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=1)
    torch.testing.assert_close(kl_divergence(mu, logvar), expected, rtol=1e-10, atol=1e-12)


def test_kl_matches_monte_carlo():
    """KL(q||p) = E_q[log q(z) - log p(z)]: estimate it from samples, compare within 5 standard errors."""
    mu, logvar = _params(n=3, d=2, seed=1)
    sigma = torch.exp(0.5 * logvar)
    g = torch.Generator().manual_seed(2)
    n = 200_000
    z = mu + sigma * torch.randn(n, *mu.shape, generator=g, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu, sigma).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    samples = log_q - log_p                      # (n, batch)
    estimate, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    kl = kl_divergence(mu, logvar)
    assert ((kl - estimate).abs() <= 5 * stderr).all(), (kl, estimate, stderr)
    # the log-sigma mix-up is far outside that error bar
    wrong = -0.5 * torch.sum(1 + 2 * logvar - mu.pow(2) - torch.exp(2 * logvar), dim=1)
    assert ((wrong - estimate).abs() > 20 * stderr).all()


def test_vae_loss_terms():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 6, 6)
    x_hat = torch.rand(4, 1, 6, 6).clamp(0.01, 0.99).requires_grad_()
    mu, logvar = (t.float().requires_grad_() for t in _params(4, 2))
    loss, recon, kl = vae_loss(x_hat, x, mu, logvar, beta=0.5)
    want_recon = F.binary_cross_entropy(x_hat, x, reduction="sum") / 4   # summed over pixels, batch mean
    torch.testing.assert_close(recon, want_recon)
    torch.testing.assert_close(kl, kl_divergence(mu, logvar).mean())
    torch.testing.assert_close(loss, recon + 0.5 * kl)
    assert loss.ndim == recon.ndim == kl.ndim == 0
    loss.backward()
    assert x_hat.grad is not None and mu.grad is not None and logvar.grad is not None
    loss1, _, _ = vae_loss(x_hat, x, mu, logvar)  # beta defaults to 1
    torch.testing.assert_close(loss1, recon + kl)
