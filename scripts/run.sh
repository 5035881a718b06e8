#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job on Fashion-MNIST. Extra arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m experiments.gnu_permuted "$@"
