#!/usr/bin/env bash
# Create .venv and install unsee with its dev extras. torch comes first, pinned, so that
# pip never pulls the multi-GB CUDA wheels on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
pip install -q -e ".[dev]"
