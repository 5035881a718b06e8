"""supsup_jax: Supermasks in Superposition (Wortsman et al., NeurIPS 2020) in JAX and Flax.

Modules, bottom up: ``init`` (frozen-weight and score initialisers), ``masks`` (mask rules with
straight-through gradients), ``masking`` (``W * M`` on any parameter pytree), ``models``,
``train`` (per-task mask training, GG evaluation), ``bank`` (bit-packed masks, superposition),
``inference`` (H/G objectives, One-Shot, Binary, ...), ``scenarios`` (GNu/GNs), ``nns``,
``metrics``, ``sharding`` and ``distributed`` (many devices and hosts), ``experiment`` (the
resumable task loop with results and plots), ``data`` (sources, task streams, batches).
"""

__version__ = "0.1.0"
