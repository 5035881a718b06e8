"""No silent wrong answers: bad inputs raise the error that names them, training that diverges
stops, corrupt checkpoints are detected and skipped, one run per workdir, one-line CLI errors."""

import os
import re
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from supsup_jax import bank as bank_lib
from supsup_jax import inference, masking, models
from supsup_jax import train as train_lib
from supsup_jax.checkpoint import RunCheckpoints, WorkdirInUseError
from supsup_jax.data import DataNotFoundError, load_dataset
from supsup_jax.errors import ConfigError, NoTaskSignalError, TrainingDivergedError
from supsup_jax.loop import StepLoop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _net(outputs=10):
    return models.lenet300_100(num_outputs=outputs, seed=0)


def _bank(net, tasks=3, capacity=4):
    bank = bank_lib.MaskBank.create(masking.masked_leaves(net.params), capacity=capacity)
    for t in range(tasks):
        scores = masking.init_scores(jax.random.key(t), net.params)
        bank = bank.add({p: s >= 0 for p, s in scores.items()})
    return bank


def _trainer(net, lr=1e-3, chunk_size=5):
    return train_lib.Trainer(net, masking.make_mask_fn("threshold"),
                             train_lib.make_optimizer("rmsprop", lr),
                             train_lib.make_preprocess((0.5,), (0.25,)), chunk_size=chunk_size)


NET = _net()
BANK = _bank(NET)
EMPTY = bank_lib.MaskBank.create(masking.masked_leaves(NET.params), capacity=4)
X = jax.random.normal(jax.random.key(0), (8, 28, 28, 1))
W = inference.first_m_weights(8, 8)
MASK = {p: np.ones(s, bool) for p, s in BANK.shapes}
METHODS = [inference.one_shot, inference.binary, inference.exhaustive,
           lambda *a: inference.gradient_descent(*a)[0],
           lambda *a: inference.shortlist(*a, size=2)]


def _with(p, value):
    return {**MASK, p: value}


LAYER = BANK.shapes[0][0]
SHAPE = BANK.shapes[0][1]

# (what, call, error type, a phrase the message must contain)
BAD_INPUTS = [
    ("lr nan", lambda: train_lib.make_optimizer("rmsprop", float("nan")), ValueError,
     "learning_rate must be a finite number > 0, got nan"),
    ("lr inf", lambda: train_lib.make_optimizer("sgd", float("inf")), ValueError,
     "learning_rate"),
    ("lr 0", lambda: train_lib.make_optimizer("adam", 0.0), ValueError, "learning_rate"),
    ("momentum nan", lambda: train_lib.make_optimizer("sgd", 0.1, momentum=float("nan")),
     ValueError, "momentum"),
    ("weight decay < 0", lambda: train_lib.make_optimizer("sgd", 0.1, weight_decay=-1.0),
     ValueError, "weight_decay"),
    ("chunk_size 0 (the hang)", lambda: StepLoop(lambda *a: a, chunk_size=0), ValueError,
     "chunk_size"),
    ("chunk_size -1", lambda: _trainer(NET, chunk_size=-1), ValueError, "chunk_size"),
    ("batch_size 0", lambda: _trainer(NET).train_task(
        _trainer(NET).init_task(jax.random.key(0)), np.zeros((16, 28, 28, 1), np.uint8),
        np.zeros(16, np.int32), jax.random.key(0), 5, 0), ValueError, "batch_size"),
    ("wrong image shape", lambda: _trainer(NET).evaluate(
        MASK, {}, np.zeros((4, 32, 32, 1), np.uint8), np.zeros(4, np.int32)), ValueError,
     "example shape (32, 32, 1)"),
    ("label beyond the outputs", lambda: _trainer(NET).evaluate(
        MASK, {}, np.zeros((4, 28, 28, 1), np.uint8), np.array([0, 1, 2, 200])), ValueError,
     "labels span [0, 200]"),
    *[(f"{i}: empty bank", lambda m=m: m(NET, NET.params, EMPTY, X, W, inference.entropy),
       ValueError, "bank is empty") for i, m in enumerate(METHODS)],
    *[(f"{i}: NaN input", lambda m=m: m(NET, NET.params, BANK, X.at[0, 0].set(jnp.nan), W,
                                        inference.entropy), ValueError, "NaN or inf")
      for i, m in enumerate(METHODS)],
    *[(f"{i}: uint8 input", lambda m=m: m(NET, NET.params, BANK, X.astype(jnp.uint8), W,
                                          inference.entropy), TypeError, "float batch")
      for i, m in enumerate(METHODS)],
    *[(f"{i}: wrong input shape", lambda m=m: m(NET, NET.params, BANK, X[:, :20], W,
                                                inference.entropy), ValueError, "expects")
      for i, m in enumerate(METHODS)],
    ("soft mask", lambda: BANK.add(_with(LAYER, np.full(SHAPE, 0.5, np.float32))), ValueError,
     "is not binary: it holds [0.5"),
    ("NaN mask", lambda: BANK.add(_with(LAYER, np.full(SHAPE, np.nan, np.float32))),
     ValueError, "is not binary"),
    ("list-of-lists mask", lambda: BANK.add(_with(LAYER, np.ones(SHAPE).tolist())), TypeError,
     "must be an array"),
    ("unlearned slot", lambda: BANK.task_masks(3), IndexError, "task 3 is not a learned slot"),
    ("negative slot", lambda: BANK.task_masks(-1), IndexError, "task -1 is not a learned slot"),
    ("out-of-range slot stats", lambda: BANK.task_batch_stats(9), IndexError, "slots 0..2"),
    ("float slot", lambda: BANK.task_masks(1.5), TypeError, "integer slot index"),
    ("NaN scores to masks", lambda: _trainer(NET).masks(
        {p: jnp.full(s, jnp.nan) for p, s in BANK.shapes}), ValueError, "contain NaN or inf"),
    ("list-of-lists masks to evaluate", lambda: _trainer(NET).evaluate(
        {p: np.ones(s).tolist() for p, s in BANK.shapes}, {},
        np.zeros((4, 28, 28, 1), np.uint8), np.zeros(4, np.int32)), TypeError,
     "must be an array"),
]


@pytest.mark.parametrize("what,call,error,phrase", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_an_error_that_names_it(what, call, error, phrase):
    with pytest.raises(error) as info:
        call()
    assert phrase in str(info.value), str(info.value)


def test_no_information_is_no_task_under_jit_never_task_0():
    # G's gradient flows only through superfluous neurons: with 10 outputs and 10 classes it is 0
    # for every task, so no method may answer a task.
    g = inference.make_objective("g", 10)
    for m in METHODS:
        got = jax.jit(lambda x, m=m: m(NET, NET.params, BANK, x, W, g))(X)
        if m is not inference.exhaustive:  # Exhaustive ranks by H whatever the objective
            assert int(got) == inference.NO_TASK, m
    nan = X.at[0, 0].set(jnp.nan)
    for m in METHODS:
        assert int(jax.jit(lambda x, m=m: m(NET, NET.params, BANK, x, W,
                                            inference.entropy))(nan)) == inference.NO_TASK
    # Outside jit, the same is an error that says why.
    for m in METHODS[:2]:
        with pytest.raises(NoTaskSignalError, match="superfluous output neurons"):
            m(NET, NET.params, BANK, X, W, g)
    # Under jit an empty bank cannot be checked eagerly: it gives NO_TASK, not 0.
    assert int(jax.jit(lambda b: inference.one_shot(NET, NET.params, b, X, W,
                                                    inference.entropy))(EMPTY)) == -1
    # The rule itself, against a hand-written reference.
    learned = jnp.array([True, True, True, False])
    assert int(inference.lowest(learned, jnp.array([0.3, -1.0, 2.0, -9.0]))) == 1
    assert int(inference.lowest(learned, jnp.zeros(4))) == inference.NO_TASK
    assert int(inference.lowest(jnp.array([True, False]), jnp.zeros(2))) == 0  # one candidate
    assert int(inference.lowest(learned, jnp.array([1.0, jnp.inf, 0.0, 0.0]))) == -1
    assert int(inference.lowest(learned, jnp.full(4, 0.5))) == 0  # equal, not empty: ties


def test_threshold_mask_of_a_nan_score_is_nan_not_a_pruned_weight():
    from supsup_jax.masks import threshold_mask

    m = np.asarray(threshold_mask(jnp.array([-1.0, 0.0, 2.0, jnp.nan])))
    np.testing.assert_array_equal(m[:3], [0.0, 1.0, 1.0])
    assert np.isnan(m[3])


def test_load_bank_refuses_truncated_foreign_inconsistent_and_other_network_files(tmp_path):
    good = tmp_path / "bank.npz"
    bank_lib.save_bank(BANK, good)
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with np.load(good) as z:
        arrays = dict(z)
    arrays["num_tasks"] = np.asarray(7, np.int32)
    np.savez(tmp_path / "seven.npz", **arrays)
    cases = [("cut.npz", "not a readable mask bank"), ("foreign.npz", "not a mask bank"),
             ("seven.npz", "num_tasks=7 does not fit the capacity 4")]
    for name, phrase in cases:
        with pytest.raises(ValueError, match=phrase):
            bank_lib.load_bank(tmp_path / name)
    with pytest.raises(ValueError, match="this network's masked weights"):
        bank_lib.load_bank(good, weights=masking.masked_leaves(models.fc1024(10).params))
    back = bank_lib.load_bank(good, weights=masking.masked_leaves(NET.params))
    assert int(back.num_tasks) == 3


def test_diverging_training_stops_and_names_the_steps():
    trainer = train_lib.Trainer(NET, masking.make_mask_fn("threshold"),
                                train_lib.make_optimizer("rmsprop", 1e38),
                                train_lib.make_preprocess((0.5,), (0.25,)), chunk_size=5)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 28, 28, 1), dtype=np.uint8)
    y = rng.integers(0, 10, 64).astype(np.int32)
    state = trainer.init_task(jax.random.key(0))
    with pytest.raises(TrainingDivergedError, match=r"steps \d+\.\.\d+"):
        trainer.train_task(state, x, y, jax.random.key(1), 20, 16)
    # The caller's state was not donated: it is still usable.
    ok = _trainer(NET).train_task(state, x, y, jax.random.key(1), 5, 16)
    assert all(bool(jnp.all(jnp.isfinite(s))) for s in ok.scores.values())
    trainer.train_task(state, x, y, jax.random.key(1), 0, 16)  # 0 steps: nothing to check


def test_an_explicit_data_dir_never_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPSUP_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataNotFoundError, match="not a directory"):
        load_dataset("fashion_mnist", download=False)
    monkeypatch.setenv("SUPSUP_DATA_DIR", "")
    with pytest.raises(DataNotFoundError, match="set but empty"):
        load_dataset("fashion_mnist", download=False)
    monkeypatch.setenv("SUPSUP_DATA_DIR", str(tmp_path))  # exists, holds nothing
    with pytest.raises(DataNotFoundError, match="system locations and the tfds default were not"):
        load_dataset("fashion_mnist", download=False)


def test_one_run_per_workdir_stale_temporaries_and_retention(tmp_path):
    (tmp_path / ".results.json.x1.tmp").write_text("{")
    first = RunCheckpoints(tmp_path, max_to_keep=2)
    assert not (tmp_path / ".results.json.x1.tmp").exists()
    with pytest.raises(WorkdirInUseError, match="in use by another run"):
        RunCheckpoints(tmp_path)
    state = {"a": np.arange(4, dtype=np.float32)}
    for step in range(1, 5):
        first.save(step, state, {"config": "c"})
    assert first.all_steps() == [3, 4]
    first.close()
    again = RunCheckpoints(tmp_path)  # the lock is released on close
    assert again.restore_meta(4) == {"config": "c"}
    again.close()


def _flip_one_byte(directory):
    files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        data = bytearray(f.read())
        i = len(data) // 2
        data[i] ^= 0x01
        f.seek(0)
        f.write(data)


def test_one_flipped_byte_is_detected_and_the_run_falls_back(tmp_path):
    ckpts = RunCheckpoints(tmp_path)
    rng = np.random.default_rng(0)
    states = {s: {"bits": rng.integers(0, 255, (64, 1024), dtype=np.uint8)} for s in (1, 2)}
    for s, st in states.items():
        ckpts.save(s, st, {"config": "c", "step": s})
    _flip_one_byte(os.path.join(ckpts.directory, "2", "state"))
    restore = lambda step, meta: ckpts.restore_state(step, states[step])  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step, meta, state = ckpts.resume(lambda meta: None, restore)
    assert step == 1 and meta["step"] == 1
    np.testing.assert_array_equal(np.asarray(state["bits"]), states[1]["bits"])
    assert any("checkpoint 2" in str(w.message) and "corrupt" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    assert os.listdir(tmp_path / "corrupt_checkpoints")[0].startswith("2-")  # kept, not deleted
    assert ckpts.all_steps() == [1]
    ckpts.close()


def _cli(*args, timeout=300):
    cmd = [sys.executable, "-m", "experiments.run",
           "--config=experiments/configs/gnu_permuted.py:tiny,fashion", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,code,phrase", [
    (["--config.nosuchfield=1"], 2, "no such config field 'nosuchfield'"),
    (["--config.lr=nan"], 1, "config field lr=nan"),
    (["--config.chunk_size=0"], 1, "config field chunk_size=0"),  # hung before
    (["--config.steps=0"], 1, "config field steps=0"),
    (["--config.batch_size=0"], 1, "config field batch_size=0"),
    (["--config.method=bogus"], 1, "config field method='bogus'"),
    (["--config.num_outputs=10"], 1, "superfluous output neurons"),
    (["--config.density=0.5"], 1, "config field density=0.5"),
    (["--config.steps=abc"], 2, "--config.steps=abc"),
    (["--config.data_dir=/no/such/dir"], 1, "config field data_dir='/no/such/dir'"),
])
def test_cli_prints_one_line_for_a_user_mistake(tmp_path, args, code, phrase, fashion_mnist):
    r = _cli(f"--workdir={tmp_path / 'w'}", *args)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr and phrase in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert not (tmp_path / "w" / "checkpoints").exists() or not os.listdir(
        tmp_path / "w" / "checkpoints")


def test_cli_help_lists_configs_variants_and_fields():
    r = subprocess.run([sys.executable, "-m", "experiments.run", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from experiments.configs import base
    from supsup_jax.runner import cli as run

    for name in run.config_names():  # every config, with its own variants
        module = __import__(f"experiments.configs.{name}", fromlist=["VARIANTS"])
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f"  {name} "))
        variants = r.stdout.splitlines()[r.stdout.splitlines().index(line) + 1]
        assert all(v in variants for v in module.VARIANTS), (name, variants)
    assert "gnu_permuted" in run.config_names() and "base" not in run.config_names()
    c = base.base_config()
    assert f"  nns.boundaries = {c.nns.boundaries!r}" in r.stdout
    assert f"  lr = {c.lr!r}" in r.stdout


def test_cli_takes_a_config_by_name(tmp_path):
    r = subprocess.run([sys.executable, "-m", "experiments.run", "--config=gnu_permuted:tiny",
                        f"--workdir={tmp_path}", "--config.nosuchfield=1"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    # Resolved to experiments/configs/gnu_permuted.py from another directory: the field check ran.
    assert r.returncode == 2 and "no such config field 'nosuchfield'" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "experiments.run", "--config=gnu_permutd:tiny",
                        f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "no config named 'gnu_permutd'" in r.stderr, r.stderr


def test_cli_runner_errors_keep_a_traceback_on_request(tmp_path, fashion_mnist):
    r = _cli(f"--workdir={tmp_path}", "--config.lr=nan", "--verbosity=1")
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_a_diverging_run_fails_and_checkpoints_nothing(tmp_path, fashion_mnist):
    from experiments.configs import gnu_permuted
    from supsup_jax.runner import train_and_evaluate

    c = gnu_permuted.get_config("tiny,fashion")
    c.lr, c.steps, c.quiet = 1e38, 10, True  # RMSprop: a first update of ~10 lr = inf
    with pytest.raises(TrainingDivergedError, match="task 0: training diverged"):
        train_and_evaluate(c, tmp_path)
    assert os.listdir(tmp_path / "checkpoints") == []
    with pytest.raises(ConfigError, match="lr=nan"):
        c.lr = float("nan")
        train_and_evaluate(c, tmp_path)


@pytest.mark.parametrize("field,value,phrase", [
    ("inference.rerank", "x", "inference.rerank='x' is not allowed"),
    ("inference.layers", (0,), "inference.layers=(0,) is not allowed"),
    ("inference.layers", ("layers/9/kernel",), "names ['layers/9/kernel'], not masked layers"),
    ("num_outputs", 10, "with inference.rerank='s'"),
    ("interpolation", "cubic", "interpolation='cubic' is not allowed"),
])
def test_bad_inference_config_fails_before_any_training(tmp_path, fashion_mnist, field, value,
                                                        phrase):
    from experiments.configs import gnu_permuted
    from supsup_jax.runner import train_and_evaluate

    c = gnu_permuted.get_config("tiny,fashion,shortlist,h")
    with c.unlocked():
        if "." not in field:
            c[field] = value
        else:
            c.inference[field.split(".")[1]] = value
    with pytest.raises(ConfigError, match=re.escape(phrase)):
        train_and_evaluate(c, tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert not os.path.exists(ckpts) or os.listdir(ckpts) == []


def test_the_config_picks_the_rotation_interpolation(fashion_mnist):
    from experiments.configs import gnu_rotated
    from supsup_jax.data.transforms import rotate
    from supsup_jax.runner.build import make_stream

    c = gnu_rotated.get_config("tiny,fashion")
    assert make_stream(c).interpolation == "bilinear"
    c.interpolation = "nearest"
    stream = make_stream(c)
    assert stream.interpolation == "nearest"
    np.testing.assert_array_equal(stream.task(1).test_images[:4],
                                  rotate(stream.task(0).test_images[:4], 10.0, "nearest"))
