"""The models shipped inside the package: each loads through the store (sha256 checked) and beats the trivial baseline.

Small held-out inputs only (models.data.HELDOUT_PHOTOS, the MNIST validation split): the shipped models never
trained on them. bench/quality.py measures the same models properly; this guards against shipping a broken
or untrained file.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aeflow.store import SHIPPED_ROOT, ModelStore
from pipeline.inference import embed, image2image
from pipeline.predictor import Predictor

SHIPPED = ("denoise", "upscale-x2", "upscale-x4", "ae", "conv-vae", "aae", "photo-ae")
# The photo embedding model is ten times the digit models (five conv levels of a 96 px colour input); the U-Net
# denoiser holds 0.56 M parameters (2.3 MB in fp32).
MAX_ONNX_BYTES = {"photo-ae": 12_000_000, "denoise": 3_000_000}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


def _y(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _shipped(name: str):
    store = ModelStore(SHIPPED_ROOT / ".no-user-store")  # an empty user store: resolution falls to the package
    ref = store.resolve(name)
    assert ref.path.is_relative_to(SHIPPED_ROOT), f"{name} did not resolve to the shipped copy"
    return ref


def _heldout_crop(name: str, size: int = 96) -> np.ndarray:
    from models.data import HELDOUT_PHOTOS, skimage_photo

    assert name in HELDOUT_PHOTOS
    a = skimage_photo(name)
    y, x = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return np.ascontiguousarray(a[y:y + size, x:x + size])


def _mnist_val(n: int = 300):
    from models.data import resolve_data

    d = resolve_data("builtin:mnist", "ae", input_size=28, channels=1, val_fraction=0.1, seed=0)
    x = np.rint(d.x_val[:n, 0] * 255).astype(np.uint8)[..., None]  # N,28,28,1 uint8 as files would hold
    return x, d.y_val[:n]


def _knn_accuracy(z: np.ndarray, y: np.ndarray) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(5), z, y, cv=5).mean())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_has_card_and_small_verified_onnx(name):
    ref = _shipped(name)
    path = ref.onnx_path()  # raises if the sha256 does not match the card
    assert path.stat().st_size < MAX_ONNX_BYTES.get(name, 2_000_000)
    assert ref.card["shipped"]["recipe"]["kind"] == ref.card["kind"]
    assert ref.card["metrics"] and ref.card["settings"]


@pytest.mark.parametrize("photo", ["camera", "rocket"])
def test_shipped_denoiser_beats_the_noisy_input(photo):
    clean = _heldout_crop(photo)
    rng = np.random.default_rng(0)
    noisy = np.clip(np.rint(clean + rng.normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    out = image2image(Predictor(str(_shipped("denoise").onnx_path())), [noisy])[0]
    assert out.shape == clean.shape and out.dtype == np.uint8
    assert _psnr(out, clean) > _psnr(noisy, clean) + 4.0  # identity is the trivial baseline


@pytest.mark.parametrize("scale", [2, 4])
def test_shipped_upscaler_beats_bicubic(scale):
    from models.data import bicubic_down

    hr = _heldout_crop("rocket", 96)
    lr = bicubic_down(hr, scale)
    bic = np.asarray(Image.fromarray(lr).resize((hr.shape[1], hr.shape[0]), Image.BICUBIC))
    out = image2image(Predictor(str(_shipped(f"upscale-x{scale}").onnx_path())), [lr])[0]
    assert out.shape == hr.shape
    c = (slice(scale, -scale), slice(scale, -scale))
    assert _psnr(_y(out)[c], _y(hr)[c]) > _psnr(_y(bic)[c], _y(hr)[c])


def test_shipped_ae_embeddings_separate_digit_classes():
    x, y = _mnist_val()
    vecs = np.stack(embed(Predictor(str(_shipped("ae").onnx_path())), list(x)))
    assert vecs.shape[0] == len(x) and np.isfinite(vecs).all()
    assert _knn_accuracy(vecs, y) > 0.8  # chance is 0.1


def _copy_set(seed: int = 0):
    """Every scikit-image photo and its four quarters (65 originals), and seven edited copies of each."""
    from models.data import BUILTIN_PHOTOS, skimage_photo
    from models.views import apply_edit

    rng = np.random.default_rng(seed)
    originals = []
    for name in BUILTIN_PHOTOS:
        a = skimage_photo(name)
        h, w = a.shape[:2]
        originals += [a] + [a[y:y + h // 2, x:x + w // 2] for y in (0, h // 2) for x in (0, w // 2)]
    edits = ("crop", "jpeg", "grey", "mirror", "tone", "letterbox", "rotate")
    copies = [apply_edit(o, e, rng) for o in originals for e in edits]
    truth = np.repeat(np.arange(len(originals)), len(edits))
    return originals, copies, truth


def _thumbnail_vectors(images: list[np.ndarray]) -> np.ndarray:
    """The trivial baseline: a 16×16 grey thumbnail, mean-removed, unit length."""
    v = np.stack([np.asarray(Image.fromarray(a).convert("L").resize((16, 16), Image.BILINEAR), np.float32).ravel()
                  for a in images])
    v -= v.mean(1, keepdims=True)
    return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6)


def test_shipped_photo_ae_finds_edited_copies_of_photos_it_never_saw():
    """photo-ae trained on the Debian photos only: scikit-image's photos (and their quarters) are new to it."""
    originals, copies, truth = _copy_set()
    p = Predictor(str(_shipped("photo-ae").onnx_path()))
    zo, zc = np.stack(embed(p, originals)), np.stack(embed(p, copies))
    assert zo.shape == (len(originals), 256) and np.allclose(np.linalg.norm(zo, axis=1), 1, atol=1e-4)
    recall = float(((zc @ zo.T).argmax(1) == truth).mean())
    tv = _thumbnail_vectors(originals), _thumbnail_vectors(copies)
    baseline = float(((tv[1] @ tv[0].T).argmax(1) == truth).mean())
    assert recall >= 0.9 and recall > baseline + 0.15, (recall, baseline)


def test_shipped_conv_vae_maps_digits_to_a_2d_latent_and_decodes_samples():
    import onnxruntime as ort

    ref = _shipped("conv-vae")
    x, y = _mnist_val()
    z = np.stack(embed(Predictor(str(ref.onnx_path())), list(x)))
    assert z.shape == (len(x), 2)
    assert _knn_accuracy(z, y) > 0.5  # a 2-d map that separates classes (chance is 0.1)
    dec = ort.InferenceSession(str(ref.file("decoder.onnx")), providers=["CPUExecutionProvider"])
    samples = dec.run(None, {dec.get_inputs()[0].name: np.random.default_rng(0).normal(size=(8, 2))
                             .astype(np.float32)})[0]
    assert samples.shape[0] == 8 and samples.size == 8 * 28 * 28 and samples.std() > 0


def test_shipped_aae_codes_match_its_prior_closer_than_the_vae_means_match_theirs():
    """The adversarial autoencoder's point: held-out codes are distributed as its prior (MMD near the two-sample
    floor), where the VAE's latent means, also pulled toward a prior (N(0, I)) by its KL term, are not."""
    import onnxruntime as ort
    import torch

    from models.adversarial import mmd2
    from models.registry import create_model
    from models.train import TrainSettings, model_config

    x, y = _mnist_val(500)  # all of the split: it is in class order, and the prior holds every class
    ref = _shipped("aae")
    z = np.stack(embed(Predictor(str(ref.onnx_path())), list(x)))
    assert z.shape == (len(x), 2) and _knn_accuracy(z, y) > 0.5  # a 2-d map that separates classes
    settings = TrainSettings.from_dict(ref.card["settings"])
    prior = create_model("aae", settings.size, **model_config(settings))
    gen = torch.Generator().manual_seed(0)
    p1, p2 = (prior.sample_prior(len(z), generator=gen) for _ in range(2))
    floor, aae = mmd2(p1, p2), mmd2(torch.from_numpy(z), p1)
    mu = np.stack(embed(Predictor(str(_shipped("conv-vae").onnx_path())), list(x)))
    vae = mmd2(torch.from_numpy(mu), torch.randn(len(mu), 2, generator=gen))
    assert aae < floor + 0.03 and aae < vae / 5, (aae, floor, vae)
    dec = ort.InferenceSession(str(ref.file("decoder.onnx")), providers=["CPUExecutionProvider"])
    samples = dec.run(None, {"latent": p1[:8].numpy()})[0]  # the prior's samples decode to images
    assert samples.shape == (8, 28, 28, 1) and samples.std() > 20


def test_first_denoise_works_out_of_the_box(tmp_path):
    """No store, no --model: `aeflow denoise` runs the shipped model."""
    src = tmp_path / "in"
    src.mkdir()
    clean = _heldout_crop("coins", 64)
    noisy = np.clip(np.rint(clean + np.random.default_rng(1).normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(src / "a.png")
    r = subprocess.run([sys.executable, "-m", "aeflow.cli", "denoise", str(src), str(tmp_path / "out"),
                        "--store", str(tmp_path / "empty-store"), "--runner", "local", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert _psnr(out, clean) > _psnr(noisy, clean) + 3.0


@pytest.mark.parametrize("job,name,check", [("upscale", "upscale-x2", ("x2",)),
                                            ("denoise", "denoise", ("sigma15", "sigma25", "sigma50"))])
def test_int8_graph_runs_on_cpu_by_default_and_fp32_on_request(tmp_path, job, name, check):
    """--precision auto picks the shipped int8 graph on CPU; switching precision redoes the outputs."""
    from aeflow.store import INT8_FILE
    from pipeline.runner import JobConfig, run_job

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    clean = {n: _heldout_crop(n, 48) for n in ("rocket", "coins")}
    rng = np.random.default_rng(4)
    for n, c in clean.items():
        noisy = np.clip(np.rint(c + rng.normal(0, 25, c.shape)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy if job == "denoise" else c).save(src / f"{n}.png")
    cfg = dict(job=job, in_dir=src, out_dir=out, model=name, store=tmp_path / "empty-store",
               device="cpu", runner="local", progress=False)
    ref = _shipped(name)
    facts = ref.card["int8"]
    assert facts["kept"] and set(facts["check"]["delta_db"]) == set(check)
    assert min(facts["check"]["delta_db"].values()) >= -0.1  # the gate it was built under (models/quantize.py)
    s = run_job(JobConfig(**cfg))
    assert s["precision"] == "int8" and s["model"]["sha256"] == ref.card["files"][INT8_FILE]
    int8_out = np.asarray(Image.open(out / "rocket.png"))
    s = run_job(JobConfig(**cfg, precision="fp32"))
    assert s["precision"] == "fp32" and s["counts"]["ok"] == 2  # another graph: redone, not skipped
    fp32_out = np.asarray(Image.open(out / "rocket.png"))
    size = 96 if job == "upscale" else 48
    assert int8_out.shape == fp32_out.shape == (size, size, 3)
    assert 0 < np.abs(int8_out.astype(int) - fp32_out).mean() < 2.0
    if job == "denoise":  # held-out photo: int8 denoises about as well as fp32
        assert abs(_psnr(int8_out, clean["rocket"]) - _psnr(fp32_out, clean["rocket"])) < 0.3
    assert run_job(JobConfig(**cfg, precision="fp32"))["counts"]["skipped"] == 2


def test_fp16_graph_is_gated_on_held_out_photos_and_runs_on_cpu_on_request(tmp_path):
    """The CUDA default graph (fp16) ships PSNR-checked on held-out photos; on CPU it runs only when asked for."""
    from aeflow.store import FP16_FILE
    from models.data import HELDOUT_PHOTOS
    from pipeline.runner import JobConfig, run_job

    for name in ("denoise", "upscale-x2", "upscale-x4"):
        facts = _shipped(name).card["fp16"]
        assert facts["kept"] and facts["check_photos"] == list(HELDOUT_PHOTOS)
        assert min(facts["check"]["delta_db"].values()) >= -0.1
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    clean = _heldout_crop("rocket", 48)
    noisy = np.clip(np.rint(clean + np.random.default_rng(5).normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(src / "rocket.png")
    cfg = dict(job="denoise", in_dir=src, out_dir=out, model="denoise", store=tmp_path / "empty-store",
               device="cpu", runner="local", progress=False)
    s = run_job(JobConfig(**cfg, precision="fp16"))
    assert s["precision"] == "fp16" and s["model"]["sha256"] == _shipped("denoise").card["files"][FP16_FILE]
    fp16_out = np.asarray(Image.open(out / "rocket.png"))
    run_job(JobConfig(**cfg, precision="fp32"))
    fp32_out = np.asarray(Image.open(out / "rocket.png"))
    assert np.abs(fp16_out.astype(int) - fp32_out).max() <= 2
    assert run_job(JobConfig(**cfg))["precision"] == "int8"  # auto on CPU never picks the fp16 graph


def test_int8_request_without_an_int8_graph_is_a_usage_error(tmp_path):
    import json
    import shutil

    from aeflow.store import INT8_FILE
    from pipeline.runner import JobConfig, JobConfigError, run_job

    plain = tmp_path / "plain"  # the shipped denoiser without its int8 graph, as an export that failed the gate
    shutil.copytree(_shipped("denoise").path, plain)
    (plain / INT8_FILE).unlink()
    card = json.loads((plain / "card.json").read_text())
    card["files"].pop(INT8_FILE)
    card["int8"]["kept"] = False
    from aeflow.store import ModelStore
    ModelStore(tmp_path / "store", include_shipped=False).register("plain-denoise", plain, card)
    (tmp_path / "in").mkdir()
    with pytest.raises(JobConfigError, match="no int8 graph"):
        run_job(JobConfig(job="denoise", in_dir=tmp_path / "in", out_dir=tmp_path / "out", model="plain-denoise",
                          store=tmp_path / "store", precision="int8", progress=False))
