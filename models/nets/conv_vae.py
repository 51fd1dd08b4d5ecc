"""`conv-vae`: a convolutional VAE with the same encode / reparameterize / decode methods as `vae`."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.nets._blocks import ConvDecoder, ConvEncoder, check_image_config
from models.registry import register_model


@dataclass
class ConvVAEConfig:
    """Convolutional VAE settings: images (channels, input_size, input_size) <-> a latent_dim Gaussian."""
    channels: int = 1
    input_size: int = 28  # a multiple of 4
    latent_dim: int = 16
    features: int = 32

    def __post_init__(self):
        check_image_config("conv-vae", self.channels, self.input_size, self.latent_dim, self.features)


@register_model
class ConvVAE(nn.Module):
    """encode(x) -> (mu, logvar) with logvar = log sigma^2; decode(z) -> x_hat in [0,1] (sigmoid)."""

    kind = "conv-vae"
    Config = ConvVAEConfig
    SIZES = {
        "tiny": dict(features=8),    # tests and smoke runs
        "small": dict(features=32),  # the default
        "base": dict(features=64),
    }
    halo = 0

    def __init__(self, cfg: ConvVAEConfig):
        super().__init__()
        self.cfg = cfg
        # One encoder with 2*latent_dim outputs: the first half is mu, the second logvar.
        self.encoder = ConvEncoder(cfg.channels, cfg.input_size, cfg.features, 2 * cfg.latent_dim)
        self.decoder = ConvDecoder(cfg.channels, cfg.input_size, cfg.features, cfg.latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z|x), each (N, latent_dim), from images (N,C,S,S) in [0,1]."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps while training (sigma = exp(logvar / 2)); mu in eval mode."""
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N,C,S,S) in [0,1] from latent vectors (N, latent_dim)."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar)."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar
