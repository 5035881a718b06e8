"""Strict numerics for every test (STYLE lesson 7): strict dtype promotion, rank promotion raises.

Warnings are errors through setup.cfg's ``filterwarnings``.
"""

import os

# Keep XLA to the two cores we have, and never let a test reach for a GPU/TPU that isn't there.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def fashion_mnist():
    """The real Fashion-MNIST, loaded once per session (skip only if the package is absent)."""
    from supsup_jax.data import load_dataset

    if not os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")):
        msg = "Fashion-MNIST not installed (Debian package dataset-fashion-mnist)"
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI must install it (scripts/setup.sh)")
        pytest.skip(msg)
    return load_dataset("fashion_mnist")
