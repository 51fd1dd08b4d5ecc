"""`ae`: a convolutional autoencoder whose latent vector is an image embedding."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.nets._blocks import ConvDecoder, ConvEncoder, check_image_config
from models.registry import register_model


@dataclass
class AEConfig:
    """Autoencoder settings: images (channels, input_size, input_size) <-> a latent_dim vector."""
    channels: int = 3      # 1 for digits, 3 for photos
    input_size: int = 64   # 28 for digits, 64 for photos; a multiple of 4
    latent_dim: int = 32
    features: int = 32

    def __post_init__(self):
        check_image_config("ae", self.channels, self.input_size, self.latent_dim, self.features)


@register_model
class ConvAutoencoder(nn.Module):
    """encode(x) -> z (N,D); decode(z) -> x_hat in [0,1] (sigmoid); forward(x) -> (x_hat, z)."""

    kind = "ae"
    Config = AEConfig
    SIZES = {
        "tiny": dict(features=8),    # tests and smoke runs
        "small": dict(features=32),  # the default
        "base": dict(features=64),
    }
    halo = 0  # an encoder sees the whole image: no tiling

    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg.channels, cfg.input_size, cfg.features, cfg.latent_dim)
        self.decoder = ConvDecoder(cfg.channels, cfg.input_size, cfg.features, cfg.latent_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent vectors (N, latent_dim) from images (N,C,S,S) in [0,1]."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N,C,S,S) in [0,1] from latent vectors."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, latent)."""
        z = self.encode(x)
        return self.decode(z), z
