#!/usr/bin/env bash
# Creates .venv with everything sd-train and its tests need, offline-friendly and CPU-only.
# open-clip-torch is installed without its dependencies: sd-train only reads the BPE vocabulary
# it ships and never imports it (importing it would pull torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -r requirements/ci.txt
.venv/bin/pip install -q --no-deps open-clip-torch==3.3.0
.venv/bin/pip install -q --no-deps -e .
