"""Shared plumbing of the model kinds: config checks, a residual block, the conv encoder/decoder of `ae`/`conv-vae`."""
from __future__ import annotations

import torch
from torch import nn


def check_image_config(kind: str, channels: int, input_size: int, latent_dim: int, features: int) -> None:
    """Raise ValueError for settings the conv stacks cannot build."""
    if channels not in (1, 3):
        raise ValueError(f"{kind}: channels must be 1 or 3, got {channels}")
    if input_size < 4 or input_size % 4:
        raise ValueError(f"{kind}: input_size must be a positive multiple of 4, got {input_size}")
    if latent_dim < 1 or features < 1:
        raise ValueError(f"{kind}: need latent_dim >= 1 and features >= 1, got {latent_dim}, {features}")


def check_stack_config(kind: str, channels: int, depth: int, min_depth: int, features: int) -> None:
    """Raise ValueError for a conv stack (denoise, upscale) that cannot be built."""
    if channels not in (1, 3):
        raise ValueError(f"{kind}: channels must be 1 or 3, got {channels}")
    if depth < min_depth or features < 1:
        raise ValueError(f"{kind}: need depth >= {min_depth} and features >= 1, got {depth}, {features}")


class ResBlock(nn.Module):
    """x + conv3x3(relu(conv3x3(x))), `features` channels throughout (EDSR's block, no batch norm)."""

    def __init__(self, features: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(features, features, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same shape as x."""
        return x + self.body(x)


class ConvEncoder(nn.Module):
    """(N,C,S,S) -> (N,out_dim): two stride-2 3x3 convs, one 3x3 conv, a linear head."""

    def __init__(self, channels: int, input_size: int, features: int, out_dim: int):
        super().__init__()
        q = input_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(channels, features, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(features, 2 * features, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * features, 2 * features, 3, padding=1), nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(2 * features * q * q, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flat features (N, out_dim)."""
        return self.net(x)


class ConvDecoder(nn.Module):
    """(N,D) -> logits (N,C,S,S): a linear layer, then two stride-2 transposed convs."""

    def __init__(self, channels: int, input_size: int, features: int, latent_dim: int):
        super().__init__()
        q = input_size // 4
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 2 * features * q * q), nn.ReLU(inplace=True),
            nn.Unflatten(1, (2 * features, q, q)),
            nn.ConvTranspose2d(2 * features, features, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(features, channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (N,C,S,S); apply a sigmoid for pixels in [0,1]."""
        return self.net(z)
