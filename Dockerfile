# aeflow, CPU image: the Prefect server, `aeflow serve`, and the Ray head/workers all run from it.
#   docker build -t aeflow:cpu .        (GPU variant: Dockerfile.gpu, see docs/deployment.md)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PREFECT_HOME=/home/aeflow/.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 PREFECT_LOGGING_LEVEL=WARNING \
    RAY_USAGE_STATS_ENABLED=0 AEFLOW_HOME=/data/store

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The CPU torch wheel first, from PyTorch's CPU index: the default PyPI build pulls several GB of CUDA.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY aeflow ./aeflow
COPY models ./models
COPY pipeline ./pipeline
COPY flows ./flows
COPY prefect.yaml ./
RUN pip install -e . && python -c "import aeflow.cli, flows.batch, flows.train"

RUN useradd --create-home --uid 1000 aeflow && mkdir -p /data && chown aeflow /data
USER aeflow
VOLUME ["/data"]
CMD ["aeflow", "--help"]
