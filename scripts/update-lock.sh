#!/usr/bin/env bash
# Re-resolve requirements/lock.txt, the tested set of facegen's dependencies.
#
#   pip install uv && bash scripts/update-lock.sh
#
# The lock is resolved from pyproject.toml (every extra) for the platform the suite runs on
# (CPython 3.11, Linux x86_64) with the newest releases the pyproject allows, and torch held
# at the release the README installs. torch itself and its CUDA runtime packages are left
# out: the README installs torch first (CPU or CUDA build, the user's choice) and the lock
# constrains everything else. The README's commands use it as a pip constraints file.
# After refreshing it, run `bash .ci/run` (which tests the locked set and the newest set).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=2.13.0
pin=$(mktemp)
trap 'rm -f "$pin"' EXIT
echo "torch==$TORCH" >"$pin"
# torch's own CUDA/Triton runtime: the user's torch build decides these, not the lock
skip=(torch triton cuda-bindings cuda-pathfinder cuda-toolkit)
for p in cublas cuda-cupti cuda-nvrtc cuda-runtime cudnn-cu13 cufft cufile curand cusolver \
  cusparse cusparselt-cu13 nccl-cu13 nvjitlink nvshmem-cu13 nvtx; do
  skip+=("nvidia-$p")
done
args=()
for p in "${skip[@]}"; do args+=(--no-emit-package "$p"); done
uv pip compile pyproject.toml --all-extras \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  -c "$pin" "${args[@]}" \
  --custom-compile-command "bash scripts/update-lock.sh" \
  -o requirements/lock.txt
# anything CUDA-specific that slipped through would pin a torch build: refuse
if grep -Ei '^(nvidia-|cuda-|triton==|torch==)' requirements/lock.txt; then
  echo "requirements/lock.txt pins torch or a CUDA runtime package: extend skip=() above" >&2
  exit 1
fi
