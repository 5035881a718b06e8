#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job on Fashion-MNIST (GNu PermutedFashionMNIST,
# experiments/configs/main_fashion.py) in $WORKDIR (default runs/main). Re-running resumes; extra
# arguments go to experiments.run, e.g. --config.num_tasks=5.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m experiments.run --config=experiments/configs/main_fashion.py \
  --workdir="${WORKDIR:-runs/main}" "$@"
