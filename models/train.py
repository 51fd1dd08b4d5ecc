"""A plain training loop for every kind: Adam, validation each epoch, early stopping, best/last checkpoints, resume."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from models.data import ARRAY_KINDS, PATCH_KINDS, VIEW_KINDS, PatchData, degrade, resolve_data, sample_patches

log = logging.getLogger(__name__)

KINDS = PATCH_KINDS + ARRAY_KINDS + VIEW_KINDS
# model presets (models/nets SIZES); "unet" is the denoiser's U-Net, "resnet" the upscalers' residual design
SIZES = ("tiny", "small", "base", "unet", "resnet")
LOSSES = ("mse", "l1")
DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("constant", "cosine")
PRIORS = ("gaussian", "mixture", "mixture-labels")  # aae: the latent prior (models/nets/aae.py draws them)
# Digit data is 28x28 grey whatever the model's own default input is.
DIGIT_DATA = ("builtin:mnist", "builtin:digits")
VAL_PATCHES = 64  # fixed validation patches for image models: enough for a stable loss, cheap on a CPU
# photo-ae: the contrastive term between two edited views of one crop, beside their reconstruction loss
# (InfoNCE, Oord et al. 2018; the weight keeps it an autoencoder: reconstruction still dominates the gradient)
PHOTO_NCE_TEMPERATURE = 0.1


@dataclass
class TrainSettings:
    """Everything that decides a training run; saved in the checkpoint and the model card."""

    kind: str
    data: str = "builtin:photos"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    latent_dim: int | None = None  # None: the model's default (ae 32, vae 2, conv-vae 16, aae 2)
    scale: int = 2                 # upscale only
    patch_size: int = 48           # image models: side of the (high-resolution) training patch
    sigma_min: float = 5.0         # denoise: noise sigma range on the 0-255 scale
    sigma_max: float = 50.0
    seed: int = 0
    device: str = "auto"
    patience: int = 3              # epochs without a better validation loss before stopping
    steps_per_epoch: int = 100     # image models (patches are drawn at random, an epoch is a step count)
    val_fraction: float = 0.1
    size: str = "small"            # model size preset: tiny | small | base
    limit: int | None = None       # at most this many images / samples
    beta: float = 1.0              # vae / conv-vae weight of the KL term
    synthetic: int = 0             # denoise/upscale: dead-leaves images added to the training split
    lr_schedule: str = "constant"  # constant | cosine (decays to 0 over all epochs, step by step)
    dilation: int | None = None    # denoise: max dilation of the convs (IRCNN ramp); None: the size preset's
    prior: str = "gaussian"        # aae: gaussian | mixture (10 on a circle) | mixture-labels (one per class)
    contrast: float = 0.1          # photo-ae: weight of the InfoNCE term between two edited views
    loss: str = "mse"              # denoise/upscale: mse | l1 between the output and the clean target
    same_photo: int = 0            # photo-ae: photos per batch giving five regions each (whole + quarters)
    mirror: bool = False           # photo-ae: encode each image with its mirror image (a flip-invariant code)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {', '.join(SIZES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.loss not in LOSSES or (self.loss != "mse" and self.kind not in PATCH_KINDS):
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}; l1 applies to {', '.join(PATCH_KINDS)} only")
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; choose one of {', '.join(PRIORS)}")
        if self.prior != "gaussian" and self.kind != "aae":
            raise ValueError(f"--prior applies to aae only, not to {self.kind}")
        if self.dilation is not None and (self.kind != "denoise" or self.dilation < 1):
            raise ValueError("--dilation applies to denoise only and must be >= 1")
        if self.contrast < 0 or (self.contrast != 0.1 and self.kind != "photo-ae"):
            raise ValueError("--contrast applies to photo-ae only and must be >= 0")
        if self.synthetic < 0:
            raise ValueError("synthetic must be >= 0")
        if self.mirror and self.kind != "photo-ae":
            raise ValueError("--mirror applies to photo-ae only")
        if self.same_photo and (self.kind != "photo-ae" or not 0 < 5 * self.same_photo <= self.batch_size):
            raise ValueError("--same-photo applies to photo-ae only, with 5 * same_photo <= batch_size")
        if self.synthetic and self.kind not in PATCH_KINDS:
            raise ValueError(f"--synthetic applies to {', '.join(PATCH_KINDS)}, not {self.kind}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.latent_dim is not None and self.kind not in ARRAY_KINDS + VIEW_KINDS:
            raise ValueError(f"--latent-dim applies to {', '.join(ARRAY_KINDS + VIEW_KINDS)}, not {self.kind}")
        if self.kind == "upscale" and self.scale not in (2, 4):
            raise ValueError(f"upscale scale must be 2 or 4, got {self.scale}")
        if self.kind == "upscale" and self.patch_size % self.scale:
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of scale {self.scale}")
        if not 0 <= self.sigma_min <= self.sigma_max:
            raise ValueError("need 0 <= sigma_min <= sigma_max")
        if min(self.epochs, self.batch_size, self.steps_per_epoch, self.patch_size) < 1 or self.patience < 0:
            raise ValueError("epochs, batch_size, steps_per_epoch and patch_size must be >= 1, patience >= 0")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        """Rebuild from a saved dict, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    """What a training run leaves behind."""

    checkpoint: Path       # best validation loss
    last_checkpoint: Path  # the latest epoch, for resuming
    history: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    device: str = "cpu"
    seconds: float = 0.0


def model_config(settings: TrainSettings) -> dict:
    """Config overrides for create_model from the settings (latent size, scale, digit image shape)."""
    cfg: dict = {}
    if settings.kind == "upscale":
        cfg["scale"] = settings.scale
    if settings.kind == "denoise" and settings.dilation is not None:
        cfg["max_dilation"] = settings.dilation
    if settings.kind == "aae":
        cfg["prior"] = settings.prior
    if settings.kind in VIEW_KINDS and settings.latent_dim is not None:
        cfg["latent_dim"] = settings.latent_dim
    if settings.kind == "photo-ae" and settings.mirror:
        cfg["mirror"] = True
    if settings.kind in ARRAY_KINDS:
        if settings.latent_dim is not None:
            cfg["latent_dim"] = settings.latent_dim
        if settings.data in DIGIT_DATA:
            cfg.update(channels=1, input_size=28)
    return cfg


def load_settings_data(settings: TrainSettings, model, data: str | None = None, val_fraction: float | None = None):
    """Resolve the run's data (or `data`) with the model's input size and channels."""
    return resolve_data(data or settings.data, settings.kind,
                        input_size=getattr(model.cfg, "input_size", 28), channels=getattr(model.cfg, "channels", 1),
                        val_fraction=val_fraction or settings.val_fraction, seed=settings.seed, limit=settings.limit,
                        synthetic=settings.synthetic if data is None else 0, fit=getattr(model.cfg, "fit", "crop"))


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no CUDA device")
    return device


def to_tensor(a: np.ndarray, device: str):
    """uint8 NHWC -> float32 NCHW in [0,1] on device."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def compute_loss(model, kind: str, inp, target, beta: float = 1.0, contrast: float = 0.1, loss: str = "mse"):
    """The training loss of one batch (a scalar tensor).

    denoise and upscale: `loss`, MSE by default, which is what PSNR measures (DnCNN trains with it). L1
    (EDSR's choice) was measured on the espcn upscaler here and kept its residual branch at zero (0 is the
    median residual of flat areas): +0.0 dB over bicubic after 800 steps, where MSE gained 1.1 dB in 100 steps.
    ae and aae: MSE of the reconstruction (the aae's adversarial phases are in models/adversarial.py).
    vae/conv-vae: vae_loss (reconstruction + beta*KL).
    """
    import torch.nn.functional as F

    if kind in ("denoise", "upscale"):
        return (F.l1_loss if loss == "l1" else F.mse_loss)(model(inp), target)
    if kind in ("ae", "aae"):
        x_hat, _ = model(inp)
        return F.mse_loss(x_hat, inp)
    if kind == "photo-ae":
        from models.losses import info_nce

        # inp: two edited views (2,N,C,S,S); target: the clean crop they came from. The first view is decoded
        # (an autoencoder that undoes the edits), both are encoded for the contrastive term.
        r1, z1 = model(inp[0])
        z2 = model.encode(inp[1])
        return F.mse_loss(r1, target) + contrast * info_nce(z1, z2, PHOTO_NCE_TEMPERATURE)
    from models.losses import vae_loss

    x_hat, mu, logvar = model(inp)
    loss, _, _ = vae_loss(x_hat, inp, mu, logvar, beta=beta)
    return loss


def _views(images, n: int, size: int, rng, device: str, same_photo: int = 0):
    """(2 edited views as one (2,N,C,S,S) tensor, the clean crops) for the photo-ae (models/views.py)."""
    import torch

    from models.views import view_batch

    v1, v2, clean = view_batch(images, n, size, rng, same_photo=same_photo)
    return torch.stack([to_tensor(v1, device), to_tensor(v2, device)]), to_tensor(clean, device)


def _val_batches(settings: TrainSettings, data, device: str, model_input_size: int = 0):
    """Fixed validation batches (same patches and noise every epoch, so epochs compare)."""
    if settings.kind in VIEW_KINDS:
        rng = np.random.default_rng([settings.seed, 7919])
        return [_views(data.val, settings.batch_size, model_input_size, rng, device)
                for _ in range(-(-VAL_PATCHES // settings.batch_size))]
    if isinstance(data, PatchData):
        rng = np.random.default_rng([settings.seed, 7919])
        clean = sample_patches(data.val, VAL_PATCHES, settings.patch_size, rng, augment=False)
        inp = degrade(settings.kind, clean, rng, scale=settings.scale, sigma_min=settings.sigma_min,
                      sigma_max=settings.sigma_max)
        bs = settings.batch_size
        return [(to_tensor(inp[i:i + bs], device), to_tensor(clean[i:i + bs], device))
                for i in range(0, len(clean), bs)]
    import torch

    x = torch.from_numpy(data.x_val)
    y = None if data.y_val is None else torch.from_numpy(np.asarray(data.y_val))
    return [(x[i:i + 256].to(device), None if y is None else y[i:i + 256].to(device)) for i in range(0, len(x), 256)]


def _train_batches(settings: TrainSettings, data, epoch: int, device: str, model_input_size: int = 0):
    """The epoch's training batches, drawn with a generator seeded by (seed, epoch) so a resumed run repeats them."""
    import torch

    rng = np.random.default_rng([settings.seed, epoch])
    if settings.kind in VIEW_KINDS:
        for _ in range(settings.steps_per_epoch):
            yield _views(data.train, settings.batch_size, model_input_size, rng, device, settings.same_photo)
    elif isinstance(data, PatchData):
        for _ in range(settings.steps_per_epoch):
            clean = sample_patches(data.train, settings.batch_size, settings.patch_size, rng)
            # fresh degradation every batch: the model never sees the same noise twice
            inp = degrade(settings.kind, clean, rng, scale=settings.scale, sigma_min=settings.sigma_min,
                          sigma_max=settings.sigma_max)
            yield to_tensor(inp, device), to_tensor(clean, device)
    else:
        # array data yields its labels as the target (None when unlabelled): only the aae's prior may use them
        order = rng.permutation(len(data.x_train))
        for i in range(0, len(order), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            y = None if data.y_train is None else torch.from_numpy(np.asarray(data.y_train)[idx]).to(device)
            yield torch.from_numpy(data.x_train[idx]).to(device), y


def _n_train_batches(settings: TrainSettings, data) -> int:
    if isinstance(data, PatchData):
        return settings.steps_per_epoch
    return -(-len(data.x_train) // settings.batch_size)


def _save(path: Path, model, **state) -> None:
    from models.checkpoint import save_checkpoint  # writes atomically (temp name, then os.replace)

    save_checkpoint(path, model, **state)


def train_model(settings: TrainSettings, workdir: Path, resume: Path | None = None,
                progress: bool = True) -> TrainResult:
    """Train settings.kind on settings.data; writes workdir/best.pt and workdir/last.pt; resume continues last.pt."""
    import torch
    from tqdm.auto import tqdm

    from models.registry import create_model

    t0 = time.time()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    best_path, last_path = workdir / "best.pt", workdir / "last.pt"
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    ckpt = None
    if resume is not None:
        from models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(resume)
        if ckpt["kind"] != settings.kind:
            raise ValueError(f"cannot resume a {settings.kind} run from {resume}: it holds a {ckpt['kind']} model")
    # a resumed run keeps the architecture it was started with (the checkpoint's config)
    model = (create_model(settings.kind, **ckpt["config"]) if ckpt is not None
             else create_model(settings.kind, settings.size, **model_config(settings))).to(device)
    optimizer = make_optimizer(model, settings)
    start_epoch, best_val, history = 1, float("inf"), []
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt["epoch"]) + 1
        best_val = float(ckpt["best_val"]) if ckpt.get("best_val") is not None else float("inf")
        history = list(ckpt.get("history") or [])
        log.info("resuming %s from %s at epoch %d", settings.kind, resume, start_epoch)
        if Path(resume).resolve() != last_path.resolve():  # keep best.pt meaningful in the new workdir
            _save(best_path, model, optimizer=optimizer, epoch=int(ckpt["epoch"]), best_val=ckpt.get("best_val"),
                  history=history, settings=asdict(settings))
    data = load_settings_data(settings, model)
    if settings.kind in VIEW_KINDS:  # views need photos of about twice the model's input; smaller, edits cost less
        from models.views import shrink

        data.train, data.val = (shrink(im, 2 * model.cfg.input_size) for im in (data.train, data.val))
    if getattr(model, "conditional", False) and getattr(data, "y_train", None) is None:
        raise ValueError(f"prior {settings.prior!r} draws each class from its own component: {settings.data} "
                         "has no labels (use builtin:mnist, builtin:digits or a folder of class subfolders)")
    size = int(getattr(model.cfg, "input_size", 0))
    val = _val_batches(settings, data, device, size)
    stale = _epochs_since_best(history)
    for epoch in range(start_epoch, settings.epochs + 1):
        if _should_stop(stale, settings.patience):
            break
        te = time.time()
        model.train()
        torch.manual_seed(settings.seed * 1000 + epoch)  # VAE sampling noise, reproducible on resume
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(_train_batches(settings, data, epoch, device, size), total=_n_train_batches(settings, data),
                   desc=f"{settings.kind} epoch {epoch}/{settings.epochs}", disable=not progress, leave=False)
        steps = _n_train_batches(settings, data)
        for i, (inp, target) in enumerate(bar):
            set_lr(optimizer, lr_at(settings, (epoch - 1) * steps + i, settings.epochs * steps))
            stats = train_step(model, optimizer, settings, inp, target)
            sums = {k: sums.get(k, 0.0) + v for k, v in stats.items()}
            n += 1
            bar.set_postfix(loss=f"{sums['loss'] / n:.4g}")
        bar.close()
        total = sums.get("loss", 0.0)
        val_loss = evaluate_loss(model, settings, val)
        improved = val_loss < best_val
        # the aae's adversarial phases add their epoch means (d_loss, g_loss, d_acc) beside the losses
        extra = {k: v / max(n, 1) for k, v in sums.items() if k != "loss"}
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), "val_loss": val_loss, **extra,
                        "seconds": round(time.time() - te, 2)})
        if improved:
            best_val = val_loss
        state = dict(optimizer=optimizer, epoch=epoch, best_val=best_val, history=history,
                     settings=asdict(settings))
        if improved:
            _save(best_path, model, **state)
        _save(last_path, model, **state)
        log.info("%s epoch %d: train %.5g val %.5g%s", settings.kind, epoch, total / max(n, 1), val_loss,
                 " (best)" if improved else "")
        stale = _epochs_since_best(history)
        if _should_stop(stale, settings.patience):
            log.info("early stop: no better validation loss for %d epochs", stale)
    if not best_path.exists():  # nothing trained (resumed a finished run): the last state is the best we have
        raise ValueError(f"no best checkpoint in {workdir}: the run has no finished epoch")
    return TrainResult(checkpoint=best_path, last_checkpoint=last_path, history=history,
                       data=data.description, device=device, seconds=round(time.time() - t0, 2))


def make_optimizer(model, settings: TrainSettings):
    """Adam over the model; the aae gets one Adam per training phase (models/adversarial.py)."""
    import torch

    if settings.kind == "aae":
        from models.adversarial import PhaseOptimizers

        return PhaseOptimizers(model, settings.lr)
    return torch.optim.Adam(model.parameters(), lr=settings.lr)


def set_lr(optimizer, lr: float) -> None:
    """Set the learning rate of a torch optimizer, or of every phase of the aae's PhaseOptimizers."""
    if hasattr(optimizer, "set_lr"):
        optimizer.set_lr(lr)
        return
    for g in optimizer.param_groups:
        g["lr"] = lr


def train_step(model, optimizer, settings: TrainSettings, inp, target) -> dict[str, float]:
    """One optimisation step on a batch; returns {"loss": the batch's training loss, ...}."""
    if settings.kind == "aae":
        from models.adversarial import train_step as aae_step

        return aae_step(model, optimizer, inp, target)
    loss = compute_loss(model, settings.kind, inp, target, settings.beta, settings.contrast, settings.loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item()}


def lr_at(settings: TrainSettings, step: int, total: int) -> float:
    """The learning rate at a global step; a pure function of the step, so a resumed run continues the curve."""
    if settings.lr_schedule == "cosine":
        return settings.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return settings.lr


def run_finished(checkpoint: dict, settings: TrainSettings) -> bool:
    """Whether a checkpoint's run is over: all epochs done, or stopped early."""
    history = checkpoint.get("history") or []
    return int(checkpoint.get("epoch", 0)) >= settings.epochs or _should_stop(_epochs_since_best(history),
                                                                                settings.patience)


def _should_stop(stale: int, patience: int) -> bool:
    """Early stopping: `patience` epochs in a row without a better validation loss."""
    return stale > 0 and stale >= patience


def _epochs_since_best(history: list[dict]) -> int:
    """How many epochs ago the validation loss was last at its best (0 when the latest epoch is the best)."""
    if not history:
        return 0
    vals = [h["val_loss"] for h in history]
    return len(vals) - 1 - int(np.argmin(vals))


def evaluate_loss(model, settings: TrainSettings, batches) -> float:
    """Mean validation loss over fixed batches, in eval mode (the VAE then decodes its mean)."""
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for inp, target in batches:
            loss = compute_loss(model, settings.kind, inp, target, settings.beta, settings.contrast, settings.loss)
            total += float(loss) * len(inp)
            n += len(inp)
    return total / max(n, 1)
