#!/usr/bin/env bash
# Sets up a fresh machine for supsup-jax: the Debian Fashion-MNIST package (when root and missing),
# a virtual environment in .venv with requirements.txt and the package itself (editable).
# Idempotent and quick on a second run (a stamp records the installed requirements).
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] Fashion-MNIST not in $FMNIST_DIR and not root: install 'dataset-fashion-mnist'" \
         "or set SUPSUP_DATA_DIR to a directory holding the idx files" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=$(cat requirements.txt setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "[setup] installing requirements into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$stamp" > .venv/.setup-stamp
fi
