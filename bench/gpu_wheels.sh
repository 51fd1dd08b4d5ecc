#!/usr/bin/env bash
# Wheels for the GPU benchmark in parts small enough to travel beside this working tree (64 MiB per device
# call in all): ../shared/tools/device-wheels packs them in 56 MB parts, which no longer fit beside the shipped
# models, so they are split again here into parts of $PART_BYTES (default 32 MB: the tree is about 28 MB) under .device-wheels/pN.
# Usage (repository root):  bash bench/gpu_wheels.sh [PIP_SPEC ...]   (default: onnxruntime-gpu tqdm)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
part=${PART_BYTES:-32000000}
[ $# -gt 0 ] || set -- onnxruntime-gpu tqdm
../shared/tools/device-wheels "$@" >/dev/null
dir=.device-wheels
cat "$dir"/p*/part.* > "$dir/all.tar"
rm -rf "$dir"/p*
split -b "$part" -d -a 2 "$dir/all.tar" "$dir/part."
rm -f "$dir/all.tar"
parts=("$dir"/part.*)
n=${#parts[@]}
for i in "${!parts[@]}"; do mkdir -p "$dir/p$i" && mv "${parts[$i]}" "$dir/p$i/"; done
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "Wheels in $n parts of at most $part bytes under $dir/ (working tree: $tree bytes). Device calls, in order:"
for ((i = 0; i < n; i++)); do
  cmd="mkdir -p \$HOME/.dw && cp $dir/p$i/part.* \$HOME/.dw/"
  ((i == 0)) && cmd="rm -rf \$HOME/.dw \$HOME/.dw-site && $cmd"
  ((i == n - 1)) && cmd="$cmd && bash bench/gpu_run.sh"
  printf '  %d. carry ["%s/p%d"], run: %s\n' $((i + 1)) "$dir" "$i" "$cmd"
done
