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


def _covered(blocks, num_tasks, steps):
    seen = {t: [] for t in range(num_tasks)}
    for block in blocks:
        for task, step, count in block:
            seen[task].extend(range(step, step + count))
    return all(sorted(v) == list(range(steps)) for v in seen.values())


def test_nns_stream_blocks_cover_every_batch_once_with_task_changes_inside_blocks():
    from supsup_jax.runner import nns_stream

    aligned = nns_stream.blocks(3, 250, 100, "aligned")
    assert [[tuple(p) for p in b] for b in aligned] == [
        [(t, s, c)] for t in range(3) for s, c in ((0, 100), (100, 100), (200, 50))]
    cont = nns_stream.blocks(3, 300, 100, "continuous", offset=30)
    assert _covered(cont, 3, 300)
    assert [sum(p.count for p in b) for b in cont] == [30] + [100] * 8 + [70]
    # Every task change falls 30 batches into a block (the block holds both tasks).
    mixed = [[(p.task, p.count) for p in b] for b in cont if len(b) > 1]
    assert mixed == [[(0, 70), (1, 30)], [(1, 70), (2, 30)]]
    for seed in range(5):
        rev = nns_stream.blocks(6, 300, 100, "revisit", offset=30, visits=3, seed=seed)
        assert _covered(rev, 6, 300)
        order = [(p.task, p.step) for b in rev for p in b]
        firsts = [order.index((t, 0)) for t in range(6)]
        assert firsts == sorted(firsts)  # tasks start in order...
        assert all(order.index((t, s)) > firsts[t] for t, s in order if s)  # ...and return
    rev = nns_stream.blocks(6, 300, 100, "revisit", visits=3, seed=0)
    late = [(t, s) for b in rev for t, s, _ in b]
    assert any(late.index((t, 200)) > late.index((t + 1, 0)) for t in range(5))
    with pytest.raises(ValueError, match="boundaries must be one of"):
        nns_stream.blocks(3, 300, 100, "random")


def test_slot_purity_against_hand_count():
    from supsup_jax.runner import nns_stream

    usage = [[[0, 100], [0, 70]], [[0, 30], [1, 100], [None, 20]], [[1, 50], [2, 50]]]
    p = nns_stream.slot_purity(usage)
    # slot 0: task 0 170, task 1 30; slot 1: task 1 100, task 2 50; slot 2: task 2 50.
    assert p["slots"] == {"0": {"0": 170, "1": 30}, "1": {"1": 100, "2": 50}, "2": {"2": 50}}
    assert p["purity"] == pytest.approx((170 + 100 + 50) / 400)  # skipped batches excluded
    assert nns_stream.slot_purity([[[None, 5]]])["purity"] is None


@pytest.mark.parametrize("boundaries", ["continuous", "revisit"])
def test_runner_nns_on_a_stream_unaligned_with_its_blocks(tmp_path, fashion_mnist, boundaries,
                                                          monkeypatch):
    from experiments.configs import gnu_2500
    from supsup_jax.runner import train_and_evaluate

    c = gnu_2500.get_config("tiny,fashion,nns")
    c.quiet = True
    c.nns.boundaries = boundaries
    seen = []
    original = nns.NNsLearner.learn_block

    def learn_block(self, state, images, labels):
        seen.append(len(images))
        return original(self, state, images, labels)

    monkeypatch.setattr(nns.NNsLearner, "learn_block", learn_block)
    res = train_and_evaluate(c, tmp_path / boundaries)
    assert seen[0] == c.nns.offset and sum(seen) == c.num_tasks * c.steps
    assert res["nns"]["boundaries"] == boundaries
    trained = sum(sum(v.values()) for v in res["nns"]["slots"].values())
    assert trained <= c.num_tasks * c.steps and 0 < res["nns"]["purity"] <= 1
    assert res["masks_allocated"] >= 1
    # The bank's bytes over the true tasks, not per mask: 1 bit per weight of each mask.
    mask_bytes = sum(-(-w.size // 8) for w in masking.masked_leaves(
        models.get_model(c.model, num_outputs=c.num_outputs).params).values())
    assert res["bytes_per_task"] == pytest.approx(
        mask_bytes * res["masks_allocated"] / c.num_tasks)
    m = np.array(res["inferred_accuracy_matrix"], dtype=float)
    last = c.num_tasks - 1
    assert np.all(np.isfinite(m[last, : last + 1]))
