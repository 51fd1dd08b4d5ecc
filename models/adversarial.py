"""The adversarial autoencoder's training step: reconstruction, discriminator, regularisation; one optimizer each.

Makhzani et al. 2015, "Adversarial Autoencoders", section 2: on every mini-batch the autoencoder first updates
encoder and decoder to reduce the reconstruction error (reconstruction phase); then the discriminator learns to
tell prior samples from encoded latents, and the encoder, as the generator, learns to fool it (regularisation
phase). The adversarial terms are the GAN losses of Goodfellow et al. 2014 (eq. 1), with the generator's
non-saturating form log D(G(x)) that section 3 of that paper recommends.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PHASES = ("reconstruction", "discriminator", "regularization")
# Adam's beta1 of 0.5 for the two adversarial phases (DCGAN's choice, Radford et al. 2016): the default 0.9
# carries the critic's momentum across the encoder's moves and the pair oscillates.
ADV_BETAS = (0.5, 0.999)
# The critic learns at half the autoencoder's rate. At the full rate it wins in the first hundred steps, before
# the codes have spread out, and the encoder then moves all codes together toward what the critic calls "prior"
# and collapses them onto a line (docs/quality.md has the seeds measured both ways).
DISC_LR_SCALE = 0.5


class PhaseOptimizers:
    """Three Adam optimizers, one per phase, saved and restored together (state_dict, load_state_dict, set_lr)."""

    def __init__(self, model, lr: float):
        self.phases = {
            "reconstruction": torch.optim.Adam([*model.encoder.parameters(), *model.decoder.parameters()], lr=lr),
            "discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=lr * DISC_LR_SCALE,
                                              betas=ADV_BETAS),
            "regularization": torch.optim.Adam(model.encoder.parameters(), lr=lr, betas=ADV_BETAS),
        }

    def __getitem__(self, phase: str) -> torch.optim.Optimizer:
        return self.phases[phase]

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every phase (the critic's at its DISC_LR_SCALE share)."""
        for k, opt in self.phases.items():
            for g in opt.param_groups:
                g["lr"] = lr * (DISC_LR_SCALE if k == "discriminator" else 1.0)

    def state_dict(self) -> dict:
        """{phase: that optimizer's state dict}."""
        return {k: opt.state_dict() for k, opt in self.phases.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore each phase's optimizer from state_dict()'s output."""
        for k, opt in self.phases.items():
            opt.load_state_dict(state[k])


def reconstruction_loss(model, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the reconstruction (the `ae`'s loss, so the two compare)."""
    x_hat, _ = model(x)
    return F.mse_loss(x_hat, x)


def discriminator_loss(model, z_fake: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """(loss, accuracy): binary cross-entropy of the critic on prior samples (1) and encoded latents (0)."""
    z_real = model.sample_prior(len(z_fake), labels)
    real, fake = model.discriminate(z_real, labels), model.discriminate(z_fake, labels)
    loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    acc = 0.5 * (float((real > 0).float().mean()) + float((fake <= 0).float().mean()))
    return loss, acc


def train_step(model, opt: PhaseOptimizers, x: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
    """One mini-batch through the three phases, each stepping its own optimizer; returns the phases' losses."""
    # 1. reconstruction: encoder + decoder
    opt["reconstruction"].zero_grad(set_to_none=True)
    rec = reconstruction_loss(model, x)
    rec.backward()
    opt["reconstruction"].step()
    # 2. discriminator: prior samples vs the (fixed) encoder's latents
    opt["discriminator"].zero_grad(set_to_none=True)
    with torch.no_grad():
        z = model.encode(x)
    d_loss, d_acc = discriminator_loss(model, z, labels)
    d_loss.backward()
    opt["discriminator"].step()
    # 3. regularisation: the encoder moves its latents where the critic says "prior"
    opt["regularization"].zero_grad(set_to_none=True)
    fake = model.discriminate(model.encode(x), labels)
    g_loss = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    g_loss.backward()
    opt["regularization"].step()
    model.discriminator.zero_grad(set_to_none=True)  # phase 3's gradients on the critic are not its own to keep
    return {"loss": float(rec.detach()), "d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach()),
            "d_acc": d_acc}


def mmd2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased squared maximum mean discrepancy between samples a (N,D) and b (M,D) (Gretton et al. 2012).

    The kernel is a sum of Gaussian RBFs at 0.5, 1, 2 and 4 times the median pairwise distance of the pooled
    samples, so one number covers both the spread and the fine structure (e.g. the mixture's components).
    """
    pooled = torch.cat([a, b])
    d2 = torch.cdist(pooled, pooled).pow(2)
    med = d2[d2 > 0].median().clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (2 * med * s * s)) for s in (0.5, 1.0, 2.0, 4.0))
    n, m = len(a), len(b)
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
                 + (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1)) - 2 * kab.mean())


def prior_match(model, z: torch.Tensor, labels: torch.Tensor | None, seed: int = 0) -> dict[str, float]:
    """How close encoded latents z (N,D) are to the prior: MMD², its floor, mean and covariance errors, critic accuracy.

    The floor is the MMD² between two prior samples of the same size: what a perfect match would score. A
    label-conditioned prior is sampled with the data's own labels, so both sides have the same class mix.
    """
    gen = torch.Generator().manual_seed(seed)
    reps = 8  # moments from 8 prior draws per latent: their sampling error is well below the latents'
    with torch.no_grad():
        p1, p2 = (model.sample_prior(len(z), labels, generator=gen) for _ in range(2))
        big = model.sample_prior(reps * len(z), None if labels is None else labels.repeat(reps), generator=gen)
        real, fake = model.discriminate(p1, labels), model.discriminate(z, labels)
    cov_p = torch.cov(big.T)
    return {"prior_mmd": mmd2(z, p1), "prior_mmd_floor": mmd2(p2, p1),
            "latent_mean_err": float((z.mean(0) - big.mean(0)).norm()),
            "latent_cov_err": float((torch.cov(z.T) - cov_p).norm() / cov_p.norm()),
            "disc_acc": 0.5 * (float((real > 0).float().mean()) + float((fake <= 0).float().mean()))}
