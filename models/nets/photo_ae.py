"""`photo-ae`: a convolutional autoencoder for colour photos whose L2-normalised latent finds copies and look-alikes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_model


@dataclass
class PhotoAEConfig:
    """Photo autoencoder settings: RGB squashed to input_size² -> `len(widths)` stride-2 convs -> latent_dim."""
    channels: int = 3
    input_size: int = 96   # a multiple of 2**len(widths)
    latent_dim: int = 256
    widths: tuple = (32, 64, 128, 256, 256)
    fit: str = "squash"    # aeflow.imageio.fit_square: the whole photo, so a crop of it still looks like it
    mirror: bool = False   # one code for an image and its mirror image: a mirrored copy is the same photo

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        if self.channels not in (1, 3):
            raise ValueError(f"photo-ae: channels must be 1 or 3, got {self.channels}")
        if not self.widths or self.input_size % (2 ** len(self.widths)):
            raise ValueError(f"photo-ae: input_size must be a multiple of {2 ** len(self.widths)}, "
                             f"got {self.input_size}")
        if self.latent_dim < 1 or min(self.widths) < 1:
            raise ValueError("photo-ae: latent_dim and widths must be >= 1")


def _down(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True))


def _up(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(b),
                         nn.ReLU(inplace=True))


@register_model
class PhotoAutoencoder(nn.Module):
    """encode(x) -> unit-length z (N,D); decode(z) -> x_hat in [0,1]; forward(x) -> (x_hat, z).

    Batch norm after each conv: photos vary in exposure far more than digits, and it lets a five-level stack
    train at a learning rate that a 2-core CPU can afford.
    """

    kind = "photo-ae"
    Config = PhotoAEConfig
    SIZES = {
        "tiny": dict(input_size=32, latent_dim=32, widths=(8, 16, 32)),  # tests and smoke runs
        "small": dict(),                                                  # the default (shipped)
        "base": dict(input_size=128, widths=(48, 96, 192, 384, 384)),
    }
    halo = 0
    normalized = True  # the exported embedding is L2-normalised: cosine similarity is a dot product

    def __init__(self, cfg: PhotoAEConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.q = cfg.input_size // 2 ** len(w)
        self.encoder = nn.Sequential(*[_down(a, b) for a, b in zip((cfg.channels, *w[:-1]), w)], nn.Flatten(),
                                     nn.Linear(w[-1] * self.q * self.q, cfg.latent_dim))
        rev = w[::-1]
        self.expand = nn.Linear(cfg.latent_dim, rev[0] * self.q * self.q)
        self.decoder = nn.Sequential(*[_up(a, b) for a, b in zip(rev[:-1], rev[1:])],
                                     nn.ConvTranspose2d(rev[-1], cfg.channels, 4, stride=2, padding=1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length codes (N, latent_dim) from images (N,C,S,S) in [0,1]."""
        if not self.cfg.mirror:
            return F.normalize(self.encoder(x), dim=1)
        # the sum over both orientations is the same for x and its mirror; one call of 2N keeps the graph simple
        h = self.encoder(torch.cat([x, x.flip(3)]))
        return F.normalize(h.reshape(2, -1, h.shape[1]).sum(0), dim=1)  # no batch size frozen into the graph

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N,C,S,S) in [0,1] from codes."""
        h = F.relu(self.expand(z)).view(-1, self.cfg.widths[-1], self.q, self.q)
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, code), like the `ae`."""
        z = self.encode(x)
        return self.decode(z), z
