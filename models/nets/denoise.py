"""`denoise`: a residual DnCNN-style fully convolutional colour denoiser (Zhang et al. 2017)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.nets._blocks import check_stack_config
from models.registry import register_model


@dataclass
class DenoiseConfig:
    """DnCNN settings: `depth` 3x3 conv layers of `features` channels, dilated up to `max_dilation`."""
    channels: int = 3
    features: int = 48
    depth: int = 8
    # 1: plain DnCNN. >1: dilations ramp 1,2,..,max and back down (IRCNN, Zhang et al. 2017), which widens the
    # receptive field (what high noise levels need) at no extra cost. Default 1 so saved configs keep meaning.
    max_dilation: int = 1

    def __post_init__(self):
        check_stack_config("denoise", self.channels, self.depth, 2, self.features)
        if self.max_dilation < 1:
            raise ValueError(f"denoise: max_dilation must be >= 1, got {self.max_dilation}")


@register_model
class DnCNN(nn.Module):
    """Predicts the noise and subtracts it: output = x - net(x) (residual learning, no clamp), any HxW."""

    kind = "denoise"
    Config = DenoiseConfig
    SIZES = {
        "tiny": dict(features=16, depth=4),   # tests and smoke runs
        "small": dict(features=48, depth=8),  # the default: trains on 2 CPU cores in minutes
        "base": dict(features=64, depth=17),  # the DnCNN paper's size; wants a GPU
    }
    # The shipped denoiser is "small" with max_dilation=4 (TrainSettings.dilation): better at high sigma for the
    # same cost, but it starts slowly (val PSNR 18.8 vs 25.1 dB for plain after the demo's 160 steps), so short
    # runs keep the plain stack.

    def __init__(self, cfg: DenoiseConfig):
        super().__init__()
        self.cfg = cfg
        c, f = cfg.channels, cfg.features
        d = self.dilations
        layers: list[nn.Module] = [nn.Conv2d(c, f, 3, padding=d[0], dilation=d[0]), nn.ReLU(inplace=True)]
        for k in d[1:-1]:
            # No BatchNorm: the small CPU batches make its statistics noisy; residual learning trains without it.
            layers += [nn.Conv2d(f, f, 3, padding=k, dilation=k), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(f, c, 3, padding=d[-1], dilation=d[-1]))
        self.net = nn.Sequential(*layers)

    @property
    def dilations(self) -> list[int]:
        """Each conv's dilation: 1, 2, .., max_dilation, .., 2, 1 over `depth` layers."""
        n = self.cfg.depth
        return [min(i + 1, n - i, self.cfg.max_dilation) for i in range(n)]

    @property
    def halo(self) -> int:
        """Receptive-field radius in input pixels: a 3x3 conv of dilation k adds k."""
        return sum(self.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised image (N,C,H,W) from a noisy float image in [0,1]."""
        return x - self.net(x)
