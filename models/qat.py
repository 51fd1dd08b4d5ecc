"""Quantization-aware fine-tuning of an int8 graph: equalise channels (conv/ReLU stacks), learn through fake int8.

Post-training int8 of the DnCNN denoiser lost 0.30 dB of mean PSNR at sigma 15 (uint8 activations add ~1 grey
level RMS of noise, and a DC shift on flat areas). Here a copy of the fp32 model is first rescaled channel by
channel (exact for ReLU stacks), then fine-tuned to match the fp32 model's output through fake quantization that
mirrors onnxruntime's QDQ recipe (per-channel symmetric int8 weights, per-tensor uint8 activations wherever the
int8 graph has them, with a zero point where they are signed), and is then quantized with exactly the steps the
fine-tuning saw. The copy only feeds the int8 graph: model.onnx stays the fp32 model, and the int8 graph is
judged against it (models/quantize.py).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np

SIGMA_RANGE = (5.0, 55.0)  # the shipped denoiser is blind over this range (README)
MAX_EQUALIZE = 32.0  # the largest factor a channel is scaled up by


@dataclass
class QatSettings:
    """The fine-tuning run; `steps=0` means post-training quantization alone."""

    steps: int = 300  # the shipped denoiser: -0.298 -> -0.059 dB at sigma 15, ~3 min on 2 cores
    lr: float = 2e-5  # 2e-4 first throws the int8 error from 0.8 to 6 grey levels (Adam's first steps)
    batch: int = 8
    crop: int = 96
    seed: int = 0
    # alpha of the channel equalisation: each ReLU channel is scaled by (tensor range / channel range)**alpha;
    # None: whichever of 0, 0.5, 1 gives the smallest fake-int8 error on the calibration batches before training
    equalize: float | None = None

    def __post_init__(self):
        bad_alpha = self.equalize is not None and not 0 <= self.equalize <= 1
        if self.steps < 0 or self.batch < 1 or self.crop < 8 or self.lr <= 0 or bad_alpha:
            raise ValueError(f"bad QatSettings: {self}")


def conv_stack(model) -> list:
    """The Conv2d layers of a conv/ReLU stack (`model.net`: the denoiser); anything else is refused."""
    from torch import nn

    net = getattr(model, "net", None)
    if not isinstance(net, nn.Sequential):
        raise ValueError(f"quantization-aware fine-tuning needs a conv/ReLU stack, not {type(model).__name__}")
    layers = list(net)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    relu_after = all(isinstance(layers[i + 1], nn.ReLU) for i, m in enumerate(layers[:-1]) if isinstance(m, nn.Conv2d))
    if any(not isinstance(m, (nn.Conv2d, nn.ReLU)) for m in layers) or not convs or not relu_after:
        raise ValueError("quantization-aware fine-tuning needs Conv2d layers each followed by ReLU, but the last")
    return convs


def is_conv_stack(model) -> bool:
    """Whether `model` is a conv/ReLU stack that conv_stack (and so equalisation) accepts."""
    try:
        conv_stack(model)
    except ValueError:
        return False
    return True


def conv_inputs(model, convs: dict, calib: list[np.ndarray]) -> dict[str, list]:
    """{name: the NCHW inputs of convs[name], one tensor per calibration batch} from running `model` on them."""

    seen: dict[str, list] = {n: [] for n in convs}
    _run_hooked(model, calib, [m.register_forward_pre_hook(lambda m, i, n=n: seen[n].append(i[0].detach().clone()))
                               for n, m in convs.items()])
    return seen


def _run_hooked(model, calib: list[np.ndarray], hooks: list) -> None:
    """Run `model` on the uint8 NHWC calibration batches for what its `hooks` record, then remove the hooks."""
    import torch

    try:
        with torch.inference_mode():
            for b in calib:
                model(torch.from_numpy(b).permute(0, 3, 1, 2).float().div(255))
    finally:
        for h in hooks:
            h.remove()


def _inputs(model, convs, calib: list[np.ndarray]) -> list:
    """Every conv's inputs over the calibration batches, one (C, pixels) tensor per conv."""
    import torch

    seen = conv_inputs(model, dict(enumerate(convs)), calib)
    return [torch.cat([x.transpose(0, 1).reshape(x.shape[1], -1) for x in seen[k]], 1) for k in range(len(convs))]


def _quantile(x, q: float, dim=None):
    """torch.quantile over all of x (dim None) or along dim 1 of a (C, pixels) tensor, on a strided sample."""
    import torch

    # torch.quantile refuses more than 16M values: a fixed stride keeps the sample spread over every image
    if dim is None:
        flat = x.flatten()
        return torch.quantile(flat[::max(1, flat.numel() // 2_000_000)], q)
    return torch.quantile(x[:, ::max(1, x.shape[1] // 200_000)], q, dim=dim)


def equalize(model, calib: list[np.ndarray], alpha: float, q: float = 0.9999):
    """A copy of `model` whose hidden ReLU channels are rescaled to similar ranges; same function, in float.

    relu(s*z) = s*relu(z) for s > 0, so scaling a conv's output channel by s and the next conv's input weights
    by 1/s changes nothing but the ranges that per-tensor uint8 activations must cover.
    """
    import torch

    m = copy.deepcopy(model).eval()
    if alpha == 0:
        return m
    convs = conv_stack(m)
    xs = _inputs(m, convs, calib)
    with torch.no_grad():
        for k in range(1, len(convs)):
            r = _quantile(xs[k], q, dim=1)
            # channels that (almost) never fire stay as they are: scaled up by 1e6 they blow up in fine-tuning
            s = (r.max() / r.clamp(min=float(r.max()) / MAX_EQUALIZE)) ** alpha
            convs[k - 1].weight.mul_(s.view(-1, 1, 1, 1))
            convs[k - 1].bias.mul_(s)
            convs[k].weight.div_(s.view(1, -1, 1, 1))
    return m


def _weight_fake_quant():
    """A parametrisation: per-output-channel symmetric int8 weights, as onnxruntime's QDQ quantizer makes them."""
    import torch
    from torch import nn

    class WeightFakeQuant(nn.Module):
        def forward(self, w):
            s = (w.detach().abs().amax((1, 2, 3)) / 127).clamp(min=1e-8)
            return torch.fake_quantize_per_channel_affine(w, s, torch.zeros_like(s, dtype=torch.int32), 0, -127, 127)

    return WeightFakeQuant()


def _record(model, points: list[tuple[str, str, str]], calib: list[np.ndarray], per_batch: int = 500_000) -> dict:
    """{tensor: a strided sample of its values over the calibration batches} at each (module, in|out, tensor)."""
    import torch

    mods = dict(model.named_modules())
    seen: dict[str, list] = {t: [] for _, _, t in points}

    def keep(t, x):
        flat = x.detach().flatten()
        seen[t].append(flat[::max(1, flat.numel() // per_batch)].clone())

    hooks = []
    for mod, where, t in points:
        if where == "in":
            hooks.append(mods[mod].register_forward_pre_hook(lambda m, i, t=t: keep(t, i[0])))
        else:
            hooks.append(mods[mod].register_forward_hook(lambda m, i, o, t=t: keep(t, o)))
    _run_hooked(model, calib, hooks)
    return {t: torch.cat(v) for t, v in seen.items()}


def uint8_step(x, q: float) -> tuple[float, int]:
    """(scale, zero point) of uint8 covering x from its (1-q) to its q quantile, zero included (exactly representable).

    Non-negative tensors (ReLU outputs, the image) start at 0 with zero point 0, as onnxruntime's recipe does.
    """
    lo = min(0.0, float(_quantile(x, 1 - q)))
    hi = max(0.0, float(_quantile(x, q)))
    scale = max(hi - lo, 1e-6) / 255
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def _quantized_copy(model, calib, keep_float: set[str], points: list[tuple[str, str, str]], q: float):
    """(copy with fake-int8 weights and activations, {tensor: (scale, zero point)}, hook handles).

    `points`: (conv module, "in" or "out", ONNX tensor) for every activation the int8 graph quantizes.
    """
    import torch
    from torch import nn
    from torch.nn.utils import parametrize

    student = copy.deepcopy(model)
    mods = dict(student.named_modules())
    seen = _record(student, points, calib)
    steps: dict[str, tuple[float, int]] = {}
    hooks = []
    for mod, where, t in points:
        # the range onnxruntime's calibration would pick (a percentile); the graph is later quantized with exactly
        # these steps, so it computes what the fine-tuning saw
        steps[t] = s, z = uint8_step(seen[t], q)

        def fq(x, s=s, z=z):
            return torch.fake_quantize_per_tensor_affine(x, s, z, 0, 255)
        if where == "in":
            hooks.append(mods[mod].register_forward_pre_hook(lambda m, i, fq=fq: (fq(i[0]),)))
        else:
            hooks.append(mods[mod].register_forward_hook(lambda m, i, o, fq=fq: fq(o)))
    for name, m in mods.items():
        if isinstance(m, nn.Conv2d) and name not in keep_float:
            parametrize.register_parametrization(m, "weight", _weight_fake_quant())
    return student, steps, hooks


def _int8_error(model, calib, keep_float: set[str], points, q: float) -> float:
    """RMS difference in grey levels between `model` and its fake-int8 copy on the calibration batches."""
    import torch

    student, _, hooks = _quantized_copy(model, calib, keep_float, points, q)
    err = []
    with torch.inference_mode():
        for b in calib:
            x = torch.from_numpy(b).permute(0, 3, 1, 2).float().div(255)
            err.append(float(((student(x) - model(x)) * 255).pow(2).mean()))
    for h in hooks:
        h.remove()
    return float(np.mean(err)) ** 0.5


def _training_pool(seed: int) -> list[np.ndarray]:
    """The denoiser's training photos plus dead-leaves images (their flat areas are where int8 shifts most)."""
    from models.data import TRAIN_PHOTOS, dead_leaves, skimage_photo

    photos = [skimage_photo(p) for p in TRAIN_PHOTOS]
    rng = np.random.default_rng([seed, 11])
    palette = np.concatenate([p.reshape(-1, 3)[::97] for p in photos])
    return photos + [dead_leaves(256, rng, palette) for _ in range(16)]


def _input_batch(pool: list[np.ndarray], rng: np.random.Generator, settings: QatSettings, scale: int = 1):
    """settings.batch random crops as the model's inputs, float NCHW in [0, 1]: with Gaussian noise of a random
    sigma each (scale 1, the denoiser), or bicubic-downscaled by `scale` (an upscaler)."""
    import torch

    from models.data import bicubic_down

    xs = []
    for _ in range(settings.batch):
        a = pool[rng.integers(len(pool))]
        y, x = rng.integers(a.shape[0] - settings.crop + 1), rng.integers(a.shape[1] - settings.crop + 1)
        c = a[y:y + settings.crop, x:x + settings.crop]
        if scale > 1:
            xs.append(bicubic_down(np.ascontiguousarray(c), scale).astype(np.float32))
            continue
        c = c.astype(np.float32)
        xs.append(np.clip(np.rint(c + rng.standard_normal(c.shape) * rng.uniform(*SIGMA_RANGE)), 0, 255))
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(255)


def finetune(model, calib: list[np.ndarray], keep_float: set[str], points: list[tuple[str, str, str]],
             settings: QatSettings, q: float = 0.99999, progress: bool = False, scale: int = 1):
    """(fp32 copy for the int8 graph, {tensor: (scale, zero point)}, facts): equalise, then distil through int8.

    `keep_float`: conv module names whose weights stay float. `points`: where the int8 graph quantizes
    activations, (conv module, "in" | "out", tensor name) (models.quantize reads them off its first int8 graph).
    Equalisation needs a conv/ReLU stack; other designs (the U-Net) are fine-tuned as they are. `scale`: 1 for a
    denoiser (noisy crops), the upscaling factor for an upscaler (downscaled crops).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils import parametrize

    t0 = time.perf_counter()
    teacher = copy.deepcopy(model).eval()
    alphas = (0.0, 0.5, 1.0) if settings.equalize is None else (settings.equalize,)
    if not is_conv_stack(teacher):
        alphas = (0.0,)
    # per-channel weight steps suffer from the rescaling what per-tensor input steps gain: measure, not guess
    candidates = {a: equalize(teacher, calib, a) for a in alphas}
    errors = {a: _int8_error(m, calib, keep_float, points, q) for a, m in candidates.items()}
    alpha = min(errors, key=errors.get)
    student, steps, hooks = _quantized_copy(candidates[alpha], calib, keep_float, points, q)
    del candidates
    student.train()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng([settings.seed, 12])
    pool = [a for a in _training_pool(settings.seed) if min(a.shape[:2]) >= settings.crop]
    opt = torch.optim.Adam(student.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, settings.steps))
    rmses: list[float] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=settings.steps, desc="int8 fine-tuning", unit="step")
    for _ in range(settings.steps):
        x = _input_batch(pool, rng, settings, scale)
        with torch.no_grad():
            target = teacher(x)
        loss = F.mse_loss(student(x), target)  # distillation: match fp32, which is what the gate compares
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        rmses.append(float(loss.detach()) ** 0.5 * 255)  # grey levels, RMS
        if bar:
            bar.update(1)
            bar.set_postfix(rmse=f"{np.mean(rmses[-20:]):.3f}")
    if bar:
        bar.close()
    student.eval()
    for h in hooks:
        h.remove()
    for conv in student.modules():
        if isinstance(conv, nn.Conv2d) and parametrize.is_parametrized(conv, "weight"):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
    tenth = max(1, len(rmses) // 10)
    facts = {**asdict(settings), "equalize": alpha,
             "equalize_errors": {str(a): round(e, 3) for a, e in errors.items()},
             "loss": "MSE to the fp32 model's output through fake int8",
             "data": "training photos + 16 dead-leaves images, "
             + (f"bicubic-downscaled x{scale}" if scale > 1 else "sigma 5-55"),
             "activation_steps": {t: [round(sc, 9), z] for t, (sc, z) in steps.items()},
             # single batches are noisy: the first and last tenth of the run, averaged
             "rmse_levels_first": round(float(np.mean(rmses[:tenth])), 3) if rmses else None,
             "rmse_levels_last": round(float(np.mean(rmses[-tenth:])), 3) if rmses else None,
             "seconds": round(time.perf_counter() - t0, 1)}
    return student, steps, facts
