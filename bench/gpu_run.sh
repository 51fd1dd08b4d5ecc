#!/usr/bin/env bash
# The last device call of the GPU benchmark (docs/benchmarks.md, "GPU"): unpack the wheels that the earlier
# calls sent (bench/gpu_wheels.sh), then run bench/gpu.py once; its JSON and
# log come back under $OUT. Usage on the GPU machine, from the repository root:  bash bench/gpu_run.sh
set -euo pipefail
: "${OUT:?run this on the device machine, where \$OUT is set}"
if [ ! -d "$HOME/.dw-site/onnxruntime" ]; then
  mkdir -p "$HOME/.dw/w"
  cat "$HOME"/.dw/part.* | tar -x -C "$HOME/.dw/w"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$HOME/.dw-site" "$HOME"/.dw/w/*.whl
fi
export PYTHONPATH="$HOME/.dw-site:$PWD" PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
python3 -c "import onnxruntime as o; o.preload_dlls(); print(o.__version__, o.get_available_providers())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 bench/gpu.py --out "$OUT/gpu.json" --work /tmp/aeflow-gpu-bench "$@" 2>&1 | tee "$OUT/gpu.log"
