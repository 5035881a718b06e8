"""Flax models for SupSup, exposed as :class:`Network` (pure ``apply`` plus pytrees)."""

from supsup_jax.models.bnnet import bnnet
from supsup_jax.models.mlp import MLP, fc1024, lenet300_100
from supsup_jax.models.network import Network, from_linen, from_nnx
from supsup_jax.models.resnet import GEMResNet18, ResNet50, gemresnet18, resnet50

MODELS = {
    "bnnet": bnnet,
    "lenet300_100": lenet300_100,
    "fc1024": fc1024,
    "gemresnet18": gemresnet18,
    "resnet50": resnet50,
}


def get_model(name: str, **kwargs) -> Network:
    """The model factory called ``name`` (one of ``MODELS``)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return factory(**kwargs)


__all__ = [
    "GEMResNet18",
    "MLP",
    "MODELS",
    "Network",
    "ResNet50",
    "bnnet",
    "fc1024",
    "from_linen",
    "from_nnx",
    "gemresnet18",
    "get_model",
    "lenet300_100",
    "resnet50",
]
