"""Benchmark models: default-size untrained models exported into a temp store, or trained ones from a store."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# job -> (model kind, config overrides); the store names are pipeline.defaults.DEFAULT_MODELS
JOB_KINDS = {"denoise": ("denoise", {}), "upscale": ("upscale", {"scale": 2}), "embed": ("photo-ae", {})}


@dataclass
class BenchModel:
    """One job's model, as the three contenders see it: a torch module and the same weights in ONNX."""

    job: str
    store: Path  # the store the aeflow CLI resolves `spec` in
    spec: str  # store name, e.g. 'denoise'
    onnx: Path  # verified model.onnx
    torch: object  # the torch nn.Module (eval mode, CPU)
    input_size: int  # encoders: S (images are resized + centre-cropped to S×S); 0 for image2image
    trained: bool
    precision: str = "fp32"  # the graph in `onnx`: the one `aeflow JOB --precision auto` runs on CPU

    @property
    def channels(self) -> int:
        """Channels the model takes (the MNIST ae is grey: 1); image2image models and photo-ae take RGB."""
        return int(getattr(self.torch.cfg, "channels", 3)) if self.input_size else 3


def _input_size(model) -> int:
    return int(getattr(model.cfg, "input_size", 0)) if callable(getattr(model, "encode", None)) else 0


def untrained_models(jobs: list[str], store_root: Path, seed: int = 0) -> dict[str, BenchModel]:
    """Default-size models with random weights, exported with models.export.export_onnx into store_root."""
    import torch

    from aeflow.store import ModelStore
    from models.export import export_onnx
    from models.registry import create_model
    from pipeline.defaults import DEFAULT_MODELS

    store = ModelStore(store_root, include_shipped=False)
    out = {}
    for job in jobs:
        kind, cfg = JOB_KINDS[job]
        torch.manual_seed(seed)  # throughput does not depend on the weights; the seed only makes runs repeatable
        model = create_model(kind, **cfg).eval()
        name = DEFAULT_MODELS[job]
        build = Path(store_root) / f".build-{name}"
        export = export_onnx(model, build / "model.onnx", name=name, version=store.next_version(name))
        card = {"kind": kind, "note": "untrained: random weights, for throughput benchmarks only",
                "onnx": {k: export[k] for k in ("inputs", "outputs", "opset", "metadata")}}
        ref = store.register(name, build, card, move=True)
        out[job] = BenchModel(job, Path(store_root), name, ref.onnx_path(), model, _input_size(model), False)
    return out


def stored_models(jobs: list[str], store_root: Path) -> dict[str, BenchModel]:
    """The jobs' default models from a store (an empty one: the shipped models), trained weights.

    The torch side comes from checkpoint.pt, or (shipped versions have none) from the card + ONNX weights.
    The ONNX side is the graph the CLI picks on CPU: model.int8.onnx when the version has one.
    """
    from aeflow.store import INT8_FILE, ModelStore
    from models.checkpoint import load_model
    from models.quantize import model_from_onnx
    from pipeline.defaults import DEFAULT_MODELS

    store = ModelStore(store_root)
    out = {}
    for job in jobs:
        ref = store.resolve(DEFAULT_MODELS[job])
        if (ref.path / "checkpoint.pt").is_file():
            model = load_model(ref.file("checkpoint.pt", verify=False)).eval()
        else:
            model = model_from_onnx(ref.card, ref.onnx_path())
        int8 = INT8_FILE in ref.card.get("files", {})
        onnx = ref.file(INT8_FILE) if int8 else ref.onnx_path()
        out[job] = BenchModel(job, Path(store_root), ref.id, onnx, model, _input_size(model), True,
                              "int8" if int8 else "fp32")
    return out
