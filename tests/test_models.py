"""Model shapes, parameter counts and the per-task BatchNorm statistics."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

from supsup_jax import masking, models


def test_mlp_shapes_and_no_bias():
    for factory, hidden in ((models.lenet300_100, (300, 100)), (models.fc1024, (1024, 1024))):
        net = factory(num_outputs=500)
        shapes = [v.shape for v in jax.tree.leaves(net.params)]
        assert shapes == [(784, hidden[0]), (hidden[0], hidden[1]), (hidden[1], 500)]
        assert net.num_outputs == 500 and net.batch_stats == {}
        y, _ = net.apply(net.params, {}, jnp.zeros((3, 28, 28, 1)), False)
        assert y.shape == (3, 500)


def test_network_is_a_pytree_traced_not_baked_into_jit():
    net = models.lenet300_100(num_outputs=10)
    leaves = jax.tree.leaves(net)
    assert len(leaves) == 3
    assert all(a is b for a, b in zip(leaves, jax.tree.leaves(net.params), strict=True))
    traces = []

    @jax.jit
    def logits(network, x):
        traces.append(1)
        return network.apply(network.params, network.batch_stats, x, False)[0]

    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    last = sorted(masking.masked_leaves(net.params))[-1]
    flipped = masking.mask_params(net.params, {last: jnp.float32(-1.0)})
    a, b = logits(net, x), logits(dataclasses.replace(net, params=flipped), x)
    # Other weights of the same network: one trace, and the weights really are arguments
    # (no bias, so the logits are linear in the output layer's kernel).
    assert len(traces) == 1
    np.testing.assert_allclose(b, -a, rtol=1e-5, atol=1e-6)
    # input_shape and num_outputs are static: a network of another width retraces.
    logits(models.lenet300_100(num_outputs=12), x)
    assert len(traces) == 2


def test_lenet_2500_task_model_has_315200_weights():
    # SPEC 3.3: LeNet with output 500 has 315,200 weights.
    w = masking.masked_leaves(models.lenet300_100(num_outputs=500).params)
    assert sum(x.size for x in w.values()) == 315_200


def test_gemresnet18_forward_and_nonaffine_bn():
    net = models.gemresnet18(num_classes=5)
    # Non-affine BN: no scale/bias parameters anywhere, only kernels.
    assert all(p.endswith("kernel") for p in masking.masked_leaves(net.params))
    assert len(jax.tree.leaves(net.params)) == 21
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    y, stats = net.apply(net.params, net.batch_stats, x, True)
    assert y.shape == (4, 5)
    # Training updates the running statistics; evaluation leaves them alone.
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, net.batch_stats)
    assert all(jax.tree.leaves(changed))
    _, same = net.apply(net.params, stats, x, False)
    chex.assert_trees_all_equal(same, stats)


def test_resnet50_masked_weight_count_and_small_forward():
    net = models.resnet50(num_classes=10, input_shape=(64, 64, 3))
    w = masking.masked_leaves(net.params)
    assert sum(x.size for x in w.values()) == 23_475_392  # SPEC 1.2: 23.48M with a 10-way head
    narrow = models.resnet50(num_classes=10, width=0.125, input_shape=(32, 32, 3))
    y, _ = narrow.apply(narrow.params, narrow.batch_stats, jnp.zeros((2, 32, 32, 3)), True)
    assert y.shape == (2, 10)
