#!/usr/bin/env bash
# Downloads, on a machine with the package registry, the pure-Python wheels that the device machine's CUDA
# image lacks (it has torch, accelerate, transformers, safetensors, numpy, Pillow, OpenCV, tensorboard, pytest
# and no network), into .gpu_wheels/ (git-ignored; about 9 MB). Carry that folder with scripts/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || py=python3
rm -rf .gpu_wheels && mkdir -p .gpu_wheels
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu_wheels \
  $(grep -E '^(diffusers|ftfy|lion-pytorch|prodigyopt|toml|schedulefree)==' requirements/ci.txt) \
  wcwidth importlib_metadata open-clip-torch==3.3.0
du -sh .gpu_wheels
