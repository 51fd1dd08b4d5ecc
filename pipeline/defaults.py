"""Per-job defaults shared by `aeflow <job>`, pipeline.runner.JobConfig and the Prefect flows (imports nothing)."""

# The model each job runs when --model is not given (the CLI, the API, the flows and the runner read this one).
DEFAULT_MODELS = {"denoise": "denoise", "upscale": "upscale-x2", "embed": "ae"}

# Inputs per batch (one worker call; for encoders also one model call). An encoder's input is a tiny S×S crop,
# so at 8 the per-batch overhead (Ray round trip, manifest write, driver bookkeeping) outweighs the work;
# image2image batches hold whole images and their activations, so they stay small.
DEFAULT_BATCH_SIZE = {"denoise": 8, "upscale": 8, "embed": 64}

# Engines of a batch job. auto: in-process while the job is shorter than a local Ray's start-up, else local Ray
# with the driver working until the actors are up (pipeline/auto_runner.py); an --address means Ray.
RUNNERS = ("auto", "ray", "local")
DEFAULT_RUNNER = "auto"

# Which graph of the model runs. auto: on CPU the version's int8 graph (model.int8.onnx), on CUDA its fp16 graph
# (model.fp16.onnx), each built and PSNR-checked at export, when it has one, else model.onnx; fp32: always
# model.onnx; int8 / fp16: that graph or exit 2.
PRECISIONS = ("auto", "fp32", "int8", "fp16")
