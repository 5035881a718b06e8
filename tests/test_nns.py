"""NNs: masks allocated from an unlabelled stream, never using the true task boundaries."""

import jax
import numpy as np
import pytest

from supsup_jax import masking, models, nns, scenarios
from supsup_jax import train as train_lib
from supsup_jax.data import BatchIterator, PermutedStream


@pytest.fixture(scope="module")
def learner_and_stream(fashion_mnist):
    stream = PermutedStream(fashion_mnist, 3, seed=0)
    net = models.lenet300_100(num_outputs=500, seed=0)  # the paper's NNs model
    preprocess = train_lib.make_preprocess(stream.mean, stream.std)
    trainer = train_lib.Trainer(net, masking.make_mask_fn("threshold"),
                                train_lib.make_optimizer("rmsprop", 1e-4), preprocess,
                                chunk_size=100)
    learner = nns.NNsLearner(trainer, budget=5, key=jax.random.key(0))
    slots = []
    # Tasks A, B, C, then A again; 3 blocks of 100 batches each. The learner sees only batches.
    for gt in [0, 1, 2, 0]:
        task = stream.task(gt)
        it = BatchIterator(len(task.train_labels), 128, jax.random.fold_in(jax.random.key(9), gt))
        for b in range(3):
            idx = it.index_chunk(b * 100, 100)
            slots.append(learner.learn_block(task.train_images[idx], task.train_labels[idx]))
    return learner, stream, slots


def test_three_tasks_allocate_three_masks_and_reuse_the_first(learner_and_stream):
    learner, _, slots = learner_and_stream
    assert learner.num_masks == 3
    assert slots == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0]
    # Every decision after the first is recorded with its confidence.
    assert len(learner.decisions) == 11
    assert [d["new"] for d in learner.decisions].count(True) == 2


def test_nns_evaluation_with_inferred_masks(learner_and_stream):
    learner, stream, slots = learner_and_stream
    how = scenarios.TaskInference("one_shot", "h", m=1)
    for gt in range(3):
        task = stream.task(gt)
        r = scenarios.evaluate_unknown_task(
            learner.trainer.network, learner.bank, task.test_images[:1024],
            task.test_labels[:1024], None, how, learner.trainer.preprocess, jax.random.key(gt),
            shared_labels=True)
        assert "task_accuracy" not in r and r["accuracy"] > 0.6


def test_budget_is_respected(fashion_mnist):
    stream = PermutedStream(fashion_mnist, 2, seed=1)
    net = models.lenet300_100(num_outputs=500, seed=0)
    trainer = train_lib.Trainer(net, masking.make_mask_fn("threshold"),
                                train_lib.make_optimizer("rmsprop", 1e-4),
                                train_lib.make_preprocess(stream.mean, stream.std),
                                chunk_size=50)
    learner = nns.NNsLearner(trainer, budget=1, key=jax.random.key(1))
    out = []
    for gt in range(2):
        task = stream.task(gt)
        idx = BatchIterator(len(task.train_labels), 128, 0).index_chunk(0, 100)
        out.append(learner.learn_block(task.train_images[idx[:50]], task.train_labels[idx[:50]]))
        out.append(learner.learn_block(task.train_images[idx[50:]], task.train_labels[idx[50:]]))
    assert learner.num_masks == 1
    assert out[:2] == [0, 0] and out[2] is None  # new data, no slot left: skipped
    with pytest.raises(ValueError, match="budget"):
        nns.NNsLearner(trainer, budget=0, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(learner.bank.learned()), [True])
