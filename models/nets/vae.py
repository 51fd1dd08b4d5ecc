"""`vae`: the fully connected VAE of Kingma & Welling (2014), 784-512-latent, as in pytorch/examples."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_model


@dataclass
class VAEConfig:
    """Fully connected VAE settings: (channels*input_size^2)-hidden-latent_dim."""
    channels: int = 1
    input_size: int = 28
    hidden: int = 512
    latent_dim: int = 2  # 2 so the latent space can be drawn directly

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"vae: channels must be 1 or 3, got {self.channels}")
        if min(self.input_size, self.hidden, self.latent_dim) < 1:
            raise ValueError("vae: input_size, hidden and latent_dim must be >= 1")


@register_model
class VAE(nn.Module):
    """encode(x) -> (mu, logvar) with logvar = log sigma^2; decode(z) -> x_hat in [0,1] (sigmoid, N,C,S,S)."""

    kind = "vae"
    Config = VAEConfig
    SIZES = {
        "tiny": dict(hidden=64),    # tests and smoke runs
        "small": dict(hidden=512),  # the default (pytorch/examples' size)
        "base": dict(hidden=1024),
    }
    halo = 0

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        n_in = cfg.channels * cfg.input_size * cfg.input_size
        self.fc1 = nn.Linear(n_in, cfg.hidden)
        self.fc_mu = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.fc_logvar = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.fc3 = nn.Linear(cfg.latent_dim, cfg.hidden)
        self.fc4 = nn.Linear(cfg.hidden, n_in)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z|x), each (N, latent_dim), from images (N,C,S,S) in [0,1]."""
        h = F.relu(self.fc1(x.flatten(1)))
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps while training (sigma = exp(logvar / 2)); mu in eval mode."""
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N,C,S,S) in [0,1] from latent vectors (N, latent_dim)."""
        c, s = self.cfg.channels, self.cfg.input_size
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))).view(-1, c, s, s)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar)."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar
