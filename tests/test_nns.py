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
    state, slots = learner.init(), []
    # Tasks A, B, C, then A again; 3 blocks of 100 batches each. The learner sees only batches.
    for gt in [0, 1, 2, 0]:
        task = stream.task(gt)
        it = BatchIterator(len(task.train_labels), 128, jax.random.fold_in(jax.random.key(9), gt))
        for b in range(3):
            idx = it.index_chunk(b * 100, 100)
            state, slot = learner.learn_block(state, task.train_images[idx],
                                              task.train_labels[idx])
            slots.append(slot)
    return learner, state, stream, slots


def test_three_tasks_allocate_three_masks_and_reuse_the_first(learner_and_stream):
    _, state, _, slots = learner_and_stream
    assert state.num_masks == 3
    assert slots == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0]
    assert state.steps == (600, 300, 300)
    # Every decision after the first is recorded with its confidence.
    assert len(state.decisions) == 11
    assert [d["new"] for d in state.decisions].count(True) == 2


def test_nns_evaluation_with_inferred_masks(learner_and_stream):
    learner, state, stream, _ = learner_and_stream
    how = scenarios.TaskInference("one_shot", "h", m=1)
    for gt in range(3):
        task = stream.task(gt)
        r = scenarios.evaluate_unknown_task(
            learner.trainer.network, state.bank, task.test_images[:1024],
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
    state, out = learner.init(), []
    for gt in range(2):
        task = stream.task(gt)
        idx = BatchIterator(len(task.train_labels), 128, 0).index_chunk(0, 100)
        for half in (idx[:50], idx[50:]):
            state, slot = learner.learn_block(state, task.train_images[half],
                                              task.train_labels[half])
            out.append(slot)
    assert state.num_masks == 1
    assert out[:2] == [0, 0] and out[2] is None  # new data, no slot left: skipped
    with pytest.raises(ValueError, match="budget"):
        nns.NNsLearner(trainer, budget=0, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(state.bank.learned()), [True])


def test_runner_resumes_an_interrupted_nns_run_to_the_same_results(tmp_path, fashion_mnist,
                                                                   monkeypatch):
    from experiments.configs import gnu_2500
    from supsup_jax.runner import train_and_evaluate

    c = gnu_2500.get_config("tiny,fashion,nns")
    c.quiet = True
    full = train_and_evaluate(c, tmp_path / "full")
    per_task = -(-c.steps // c.nns.decide_every)
    blocks, kill_at = [], [per_task + 2]  # inside the second task, after task 0's checkpoint
    original = nns.NNsLearner.learn_block

    def learn_block(self, *args):
        blocks.append(1)
        if len(blocks) == kill_at[0]:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(nns.NNsLearner, "learn_block", learn_block)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(c, tmp_path / "cut")
    kill_at[0] = None
    resumed = train_and_evaluate(c, tmp_path / "cut")
    for k in ("accuracy_matrix", "inferred_accuracy_matrix", "masks_allocated"):
        assert resumed[k] == full[k], k
