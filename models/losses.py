"""Loss terms: the VAE's Gaussian KL divergence and BCE + beta * KL objective; the photo-ae's InfoNCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per sample (N,), summed over latent dims; logvar = log sigma^2."""
    # Kingma & Welling 2014, Auto-Encoding Variational Bayes, Appendix B:
    # -KL = 1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2), with sigma^2 = exp(logvar).
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def vae_loss(x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon, kl), each a batch mean: recon = BCE summed over pixels per sample, loss = recon + beta * kl.

    `x_hat` are probabilities in [0,1] (the decoder's sigmoid output) and `x` targets in [0,1]. Summing the
    BCE over pixels makes it the negative Bernoulli log-likelihood -log p(x|z), so recon + kl is the negative
    ELBO of Kingma & Welling (2014); beta > 1 weighs the KL more (Higgins et al. 2017, beta-VAE).
    """
    n = x.shape[0]
    recon = F.binary_cross_entropy(x_hat.reshape(n, -1), x.reshape(n, -1), reduction="none").sum(dim=1)
    kl = kl_divergence(mu, logvar)
    recon_mean, kl_mean = recon.mean(), kl.mean()
    return recon_mean + beta * kl_mean, recon_mean, kl_mean


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between unit-length codes of two views (N,D): row i of z1 should pick row i of z2.

    Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding", eq. 4, with the other
    samples of the batch as negatives (SimCLR's NT-Xent, Chen et al. 2020, without the projection head).
    """
    logits = z1 @ z2.T / temperature
    labels = torch.arange(len(z1), device=z1.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
