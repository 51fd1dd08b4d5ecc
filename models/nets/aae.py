"""`aae`: the adversarial autoencoder of Makhzani et al. (2015): an autoencoder whose latent is matched to a prior."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.registry import register_model
from models.train import PRIORS


@dataclass
class AAEConfig:
    """AAE settings: (channels*input_size^2) -> `layers` x `hidden` -> latent_dim, the mirror back, a latent critic."""
    channels: int = 1
    input_size: int = 28
    hidden: int = 256
    layers: int = 2            # hidden layers in the encoder and in the decoder (the lesson's notebook has 3 of 1000)
    latent_dim: int = 2        # 2 for latent maps, 8-32 for embeddings
    disc_hidden: int = 256     # the discriminator: latent -> 2 x disc_hidden -> one logit
    # gaussian: N(0, I). mixture: 10 Gaussians on a circle in (z0, z1), N(0, 1) in the other dims (the paper's
    # Figure 4). mixture-labels: the same mixture, each label drawn from its own component (Figure 6).
    prior: str = "gaussian"
    components: int = 10
    radius: float = 4.0        # mixture: distance of each component's mean from the origin
    radial_std: float = 1.0    # mixture: spread of a component along its radius ...
    tangential_std: float = 0.3  # ... and across it, so neighbouring components do not overlap

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"aae: channels must be 1 or 3, got {self.channels}")
        if min(self.input_size, self.hidden, self.layers, self.latent_dim, self.disc_hidden) < 1:
            raise ValueError("aae: input_size, hidden, layers, latent_dim and disc_hidden must be >= 1")
        if self.prior not in PRIORS:
            raise ValueError(f"aae: prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        if self.prior != "gaussian" and (self.latent_dim < 2 or self.components < 2):
            raise ValueError("aae: a mixture prior needs latent_dim >= 2 and components >= 2")


def _mlp(sizes: list[int], last_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_act:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@register_model
class AdversarialAutoencoder(nn.Module):
    """encode(x) -> z (deterministic q(z|x)); decode(z) -> x_hat in [0,1]; discriminate(z, y) -> logit of "prior"."""

    kind = "aae"
    Config = AAEConfig
    SIZES = {
        "tiny": dict(hidden=128, layers=1, disc_hidden=32),  # tests and smoke runs
        "small": dict(hidden=256, layers=2),                 # the default: 100 MNIST epochs in 2 minutes on 2 cores
        "base": dict(hidden=1000, layers=3),                 # the lesson notebook's 784-1000-1000-1000 stacks
    }
    halo = 0

    def __init__(self, cfg: AAEConfig):
        super().__init__()
        self.cfg = cfg
        n_in = cfg.channels * cfg.input_size * cfg.input_size
        hid = [cfg.hidden] * cfg.layers
        self.encoder = _mlp([n_in, *hid, cfg.latent_dim], last_act=False)
        self.decoder = _mlp([cfg.latent_dim, *hid, n_in], last_act=False)
        # A label-conditioned prior shows the critic the label as a one-hot (the paper's Figure 6 set-up), so
        # it can tell a latent that sits in another label's component from a true prior sample.
        n_cond = cfg.components if cfg.prior == "mixture-labels" else 0
        self.discriminator = _mlp([cfg.latent_dim + n_cond, cfg.disc_hidden, cfg.disc_hidden, 1], last_act=False)

    @property
    def conditional(self) -> bool:
        """Whether the prior (and the discriminator) take the class label."""
        return self.cfg.prior == "mixture-labels"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes (N, latent_dim) from images (N,C,S,S) in [0,1]."""
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N,C,S,S) in [0,1] from latent codes."""
        c, s = self.cfg.channels, self.cfg.input_size
        return torch.sigmoid(self.decoder(z)).view(-1, c, s, s)

    def discriminate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N,) that z was drawn from the prior rather than encoded from data."""
        if self.conditional:
            z = torch.cat([z, self._one_hot(labels, len(z), z)], dim=1)
        return self.discriminator(z).squeeze(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, latent), like the `ae`."""
        z = self.encode(x)
        return self.decode(z), z

    def sample_prior(self, n: int, labels: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples (n, latent_dim) of the prior; mixture-labels draws sample i from component labels[i]."""
        cfg = self.cfg
        dev = next(self.parameters()).device
        eps = torch.randn(n, cfg.latent_dim, generator=generator).to(dev)
        if cfg.prior == "gaussian":
            return eps
        if self.conditional:
            comp = self._labels(labels, n).to(dev)
        else:
            comp = torch.randint(cfg.components, (n,), generator=generator).to(dev)
        theta = comp.float() * (2 * math.pi / cfg.components)
        cos, sin = torch.cos(theta), torch.sin(theta)
        r = cfg.radius + cfg.radial_std * eps[:, 0]  # along the component's radius
        t = cfg.tangential_std * eps[:, 1]          # across it
        z = eps.clone()
        z[:, 0] = r * cos - t * sin
        z[:, 1] = r * sin + t * cos
        return z

    def prior_density(self, points: torch.Tensor) -> torch.Tensor:
        """The prior's density at 2-d points (M, 2), marginal over the other dims (for the latent picture)."""
        cfg = self.cfg
        if cfg.prior == "gaussian":
            return torch.exp(-0.5 * points.pow(2).sum(1)) / (2 * math.pi)
        dens = torch.zeros(len(points), dtype=points.dtype)
        for k in range(cfg.components):
            th = k * 2 * math.pi / cfg.components
            # coordinates along and across component k's radius
            u = points[:, 0] * math.cos(th) + points[:, 1] * math.sin(th) - cfg.radius
            v = -points[:, 0] * math.sin(th) + points[:, 1] * math.cos(th)
            dens += torch.exp(-0.5 * ((u / cfg.radial_std) ** 2 + (v / cfg.tangential_std) ** 2))
        return dens / (cfg.components * 2 * math.pi * cfg.radial_std * cfg.tangential_std)

    def _labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        if labels is None or len(labels) != n:
            raise ValueError("aae with prior 'mixture-labels' needs one class label per sample (labelled data)")
        labels = labels.long()
        if int(labels.min()) < 0 or int(labels.max()) >= self.cfg.components:
            raise ValueError(f"aae: labels must be in 0..{self.cfg.components - 1} (one mixture component each)")
        return labels

    def _one_hot(self, labels: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
        lab = self._labels(labels, n).to(like.device)
        return nn.functional.one_hot(lab, self.cfg.components).to(like.dtype)
