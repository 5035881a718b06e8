"""The library's own error types, one per kind of mistake a user can make (the rest are the
built-in ``ValueError``, ``TypeError`` and ``IndexError`` with a message naming the argument).

The CLI prints these as one line without a traceback (:mod:`supsup_jax.runner.cli`)."""

from __future__ import annotations

__all__ = ["ConfigError", "NoTaskSignalError", "TrainingDivergedError"]


class ConfigError(ValueError):
    """A config field holds a value the run cannot use; the message names the field, its value
    and what is allowed."""


class TrainingDivergedError(FloatingPointError):
    """Training produced a non-finite loss or parameters (e.g. a NaN or infinite learning
    rate); nothing from the diverged steps is checkpointed."""


class NoTaskSignalError(ValueError):
    """Task inference got no information from the inputs: the objective's gradient is equal for
    every learned task (e.g. G without superfluous output neurons) or not finite."""
