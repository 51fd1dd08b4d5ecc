"""Every registered model: config handling, forward shapes, and a halo that really bounds the receptive field."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from models.registry import _model_class, create_model, list_models, register_model

KINDS = ["aae", "ae", "conv-vae", "denoise", "photo-ae", "upscale", "vae"]


def _input(model, n=2, h=20, w=28):
    cfg = model.cfg
    if hasattr(model, "encode"):
        return torch.rand(n, cfg.channels, cfg.input_size, cfg.input_size)
    return torch.rand(n, cfg.channels, h, w)


def test_all_kinds_registered():
    assert list_models() == KINDS


@pytest.mark.parametrize("kind", list_models())
def test_forward_shapes(kind):
    torch.manual_seed(0)
    assert "tiny" in _model_class(kind).SIZES and "small" in _model_class(kind).SIZES
    model = create_model(kind, size="tiny").eval()
    assert model.kind == kind and isinstance(model.cfg, _model_class(kind).Config)
    assert isinstance(model.halo, int) and model.halo >= 0
    x = _input(model)
    cfg = model.cfg
    with torch.no_grad():
        out = model(x)
        if kind in ("denoise", "upscale"):
            s = getattr(cfg, "scale", 1)
            assert out.shape == (2, cfg.channels, 20 * s, 28 * s) and out.dtype == torch.float32
        elif kind in ("ae", "aae", "photo-ae"):
            x_hat, z = out
            assert z.shape == (2, cfg.latent_dim) and x_hat.shape == x.shape
            assert torch.equal(model.encode(x), z) and model.decode(z).shape == x.shape
            assert 0 <= x_hat.min() and x_hat.max() <= 1
        else:
            x_hat, mu, logvar = out
            assert x_hat.shape == x.shape and 0 <= x_hat.min() and x_hat.max() <= 1
            assert mu.shape == logvar.shape == (2, cfg.latent_dim)
            m2, lv2 = model.encode(x)
            assert torch.equal(m2, mu) and torch.equal(lv2, logvar)
            assert torch.equal(model.reparameterize(mu, logvar), mu)  # eval mode: the mean
            assert model.decode(mu).shape == x.shape
            model.train()
            z = model.reparameterize(mu, logvar)
            assert z.shape == mu.shape and not torch.equal(z, mu)  # training: a sample


@pytest.mark.parametrize("kind,cfg", [("denoise", {}), ("denoise", {"max_dilation": 3}), ("upscale", {"scale": 2}),
                                      ("upscale", {"scale": 4}), ("upscale", {"scale": 2, "arch": "resnet"}),
                                      ("upscale", {"scale": 4, "arch": "resnet"})])
def test_halo_bounds_receptive_field(kind, cfg):
    """Changing one input pixel changes only outputs within `halo` input pixels of it (what tiling relies on)."""
    torch.manual_seed(0)
    model = create_model(kind, size="tiny", **cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # the upscaler's last conv starts at zero: give it weights
            p.add_(0.1 * torch.randn_like(p))
        x = torch.rand(1, 3, 31, 31)
        x2 = x.clone()
        x2[0, :, 15, 15] += 0.5
        changed = (model(x2) - model(x)).abs().amax(dim=1)[0] > 1e-6
    s = cfg.get("scale", 1)
    ys, xs = torch.nonzero(changed, as_tuple=True)
    # output pixel (y, x) belongs to input pixel (y // s, x // s): tiles map to output blocks of s x s
    dist = torch.maximum((ys // s - 15).abs(), (xs // s - 15).abs())
    assert dist.max() <= model.halo
    assert dist.max() == model.halo  # and the halo is tight, not a loose over-estimate


def test_sizes_and_overrides():
    assert create_model("denoise").cfg == _model_class("denoise").Config()
    m = create_model("denoise", size="tiny", depth=3)
    assert (m.cfg.features, m.cfg.depth) == (_model_class("denoise").SIZES["tiny"]["features"], 3)
    assert m.halo == 3
    assert dataclasses.asdict(create_model("vae", latent_dim=5).cfg)["latent_dim"] == 5


def test_bad_config_errors():
    with pytest.raises(TypeError, match="depht.*feature"):
        create_model("denoise", depht=3, feature=2)
    with pytest.raises(ValueError, match="unknown model kind 'nope'"):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown size"):
        create_model("ae", size="huge")
    with pytest.raises(ValueError, match="scale"):
        create_model("upscale", scale=3)
    with pytest.raises(ValueError, match="multiple of 4"):
        create_model("ae", input_size=30)
    with pytest.raises(ValueError, match="channels"):
        create_model("conv-vae", channels=2)


def test_register_model_rejects_duplicates_and_incomplete_classes():
    class NoKind(torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="kind"):
        register_model(NoKind)

    @dataclasses.dataclass
    class Cfg:
        pass

    class Clash(torch.nn.Module):
        kind, Config, SIZES = "denoise", Cfg, {}

    list_models()  # make sure the real "denoise" is registered first
    with pytest.raises(ValueError, match="already registered"):
        register_model(Clash)


def _unet(features: int = 8):
    torch.manual_seed(0)
    m = create_model("denoise", arch="unet", features=features).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_unet_halo_bounds_its_receptive_field_at_every_stride_phase():
    """The U-Net's reach depends on where a pixel sits on its 4-pixel stride grid: the halo covers every phase."""
    m = _unet()
    assert m.halo % m.unet.STRIDE == 0
    reaches = []
    for phase in range(m.unet.STRIDE):
        c = 40 + phase
        x = torch.rand(1, 3, 96, 96)
        x2 = x.clone()
        x2[0, :, c, c] += 0.5
        with torch.no_grad():
            changed = (m(x2) - m(x)).abs().amax(dim=1)[0] > 1e-7
        ys, xs = torch.nonzero(changed, as_tuple=True)
        reaches.append(int(torch.maximum((ys - c).abs(), (xs - c).abs()).max()))
    assert max(reaches) <= m.halo < max(reaches) + m.unet.STRIDE  # covered, with less than one stride of slack


@pytest.mark.parametrize("h,w", [(70, 90), (64, 33)])
def test_unet_tiled_equals_untiled_on_any_size(h, w):
    """Tiles start on the stride grid of the whole image (tile and halo multiples of 4): stitched == whole."""
    import numpy as np

    from pipeline.tiling import predict_tiled

    m = _unet()
    img = np.random.default_rng(h).random((h, w, 3)).astype(np.float32)

    def run(batch):
        with torch.no_grad():
            return m(torch.from_numpy(batch).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    whole = run(img[None])[0]
    assert whole.shape == img.shape  # padded to the stride inside, cropped back
    tiled = predict_tiled(run, img, 24, m.halo)
    assert np.abs(tiled - whole).max() < 1e-5


def test_unet_and_resnet_presets():
    d = create_model("denoise", size="unet")
    assert d.cfg.arch == "unet" and 0.5e6 < sum(p.numel() for p in d.parameters()) < 0.6e6
    u = create_model("upscale", size="resnet", scale=4)
    assert u.cfg.arch == "resnet" and u.halo == 11
    with torch.no_grad():  # starts as bicubic: the residual branch's last conv is zero
        x = torch.rand(1, 3, 12, 10)
        assert torch.allclose(u(x), u.bicubic(x))
    with pytest.raises(ValueError, match="arch"):
        create_model("denoise", arch="transformer")
    with pytest.raises(ValueError, match="max_dilation applies to the dncnn"):
        create_model("denoise", arch="unet", max_dilation=2)


def test_dilated_denoiser_ramps_up_and_down():
    assert create_model("denoise", size="small").halo == 8  # the default stays plain: it trains fast
    m = create_model("denoise", size="small", max_dilation=4)
    assert m.dilations == [1, 2, 3, 4, 4, 3, 2, 1] and m.halo == 20
    assert create_model("denoise", depth=5, max_dilation=9).dilations == [1, 2, 3, 2, 1]
    with pytest.raises(ValueError, match="max_dilation"):
        create_model("denoise", max_dilation=0)


@pytest.mark.parametrize("scale", [2, 4])
def test_upscaler_bicubic_conv_equals_torch_bicubic(scale):
    """The fixed conv + PixelShuffle base is torch's bicubic upsampling, borders included, and is not saved."""
    import torch.nn.functional as F

    m = create_model("upscale", size="tiny", scale=scale)
    for shape in [(2, 3, 13, 21), (1, 3, 1, 2), (1, 3, 4, 4)]:
        x = torch.rand(shape)
        ref = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
        assert torch.allclose(m.bicubic(x), ref, atol=1e-6)
    assert not any("bicubic" in k for k in m.state_dict())
