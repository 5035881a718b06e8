"""Every config's tiny variant end to end, kill-and-resume with a real subprocess, results."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from supsup_jax import results
from supsup_jax.runner import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
KEYS = {"config", "seed", "versions", "device", "scenario", "num_tasks", "accuracy_matrix",
        "task_inference_accuracy", "average_accuracy", "backward_transfer", "forgetting",
        "bytes_per_task", "wall_time_per_task", "provenance"}


def _config(name, variants):
    from importlib import import_module

    return import_module(f"experiments.configs.{name}").get_config(variants)


def _check_results(workdir, res):
    assert KEYS <= set(res)
    loaded = results.load_results(workdir)
    assert KEYS <= set(loaded)
    t = res["num_tasks"]
    m = loaded["accuracy_matrix"]
    assert len(m) == t
    for name in ("accuracy_vs_tasks.png", "accuracy_matrix.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    assert os.path.exists(os.path.join(workdir, "accuracy.csv"))
    _check_provenance(loaded["provenance"])
    return loaded


def _check_provenance(p):
    from supsup_jax import kernels

    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:  # a checkout: the commit, marked when files are changed
        assert p["git_commit"].split("+")[0] == head.stdout.strip()
    assert p["bank_products"] == kernels.kernel_status() and p["devices"] >= 1
    assert p["data_source"] and p["dataset"] and isinstance(p["command_line"], list)
    assert p["device_kind"].startswith(jax.devices()[0].platform)


# The Fashion-MNIST twins run on the real data here.
@pytest.mark.parametrize("name,variants", [
    ("main_fashion", "tiny"),
    ("main_fashion", "tiny,fc"),
    ("gnu_permuted", "tiny,fashion"),
    ("gnu_permuted", "tiny,fashion,lenet,h"),
    ("gnu_2500", "tiny,fashion"),
    ("gnu_2500", "tiny,fashion,nns"),
    ("gnu_rotated", "tiny,fashion"),
    ("gnu_rotated", "tiny,fashion,shortlist"),
    ("output_size", "tiny,fashion,s25,g"),
    ("gns_permuted", "tiny,fashion"),
    ("split_mnist", "tiny,fashion"),
])
def test_tiny_variants_on_fashion_mnist(tmp_path, fashion_mnist, name, variants):
    res = train_and_evaluate(_config(name, variants), tmp_path)
    loaded = _check_results(tmp_path, res)
    if res["scenario"] != "GG":
        assert loaded["inferred_accuracy_matrix"] is not None
    if res["scenario"] == "NNs":
        assert 1 <= res["masks_allocated"] <= 6


def test_main_job_is_lenet_with_an_fc_variant():
    # The README's first command must fit a modest CPU (issue 12): LeNet 300-100 by default.
    assert _config("main_fashion", None).model == "lenet300_100"
    assert _config("main_fashion", "fc").model == "fc1024"
    with pytest.raises(ValueError, match="unknown config variants"):
        _config("main_fashion", "resnet")


def _mock(dataset_names, num_examples):
    tfds = pytest.importorskip("tensorflow_datasets")
    return tfds.testing.mock_data(num_examples=num_examples,
                                  policy=tfds.testing.MockPolicy.USE_CODE)


# The MNIST originals through tensorflow-datasets' mock data (no download).
@pytest.mark.parametrize("name,variants", [("gnu_permuted", "tiny"), ("split_mnist", "tiny")])
def test_tiny_variants_on_mock_mnist(tmp_path, monkeypatch, name, variants):
    monkeypatch.delenv("SUPSUP_DATA_DIR", raising=False)
    with _mock(["mnist"], 600):
        res = train_and_evaluate(_config(name, variants), tmp_path)
    _check_results(tmp_path, res)


@pytest.mark.slow
def test_tiny_splitcifar100_on_mock_data(tmp_path, monkeypatch):
    monkeypatch.delenv("SUPSUP_DATA_DIR", raising=False)
    with _mock(["cifar100"], 2000):
        res = train_and_evaluate(_config("gg_splitcifar100", "tiny,transfer"), tmp_path)
    _check_results(tmp_path, res)


@pytest.mark.slow
def test_splitcifar100_comparison_over_seeds_on_mock_data(tmp_path, monkeypatch):
    from experiments import compare

    monkeypatch.delenv("SUPSUP_DATA_DIR", raising=False)
    with _mock(["cifar100"], 2000):
        runs = compare.run_figure("splitcifar100", tmp_path, tiny=True, quiet=True, seeds=2,
                                  only=["supsup", "batche"], extra={"tensorboard": False})
    for seeds in runs.values():
        assert [r["seed"] for r in seeds] == [0, 1]
        xs, mean, std = compare.seed_curve(seeds)
        assert xs and np.all(np.isfinite(mean)) and np.all(std >= 0)
    assert "±" in (tmp_path / "comparison.md").read_text()


@pytest.mark.slow
def test_tiny_splitimagenet_on_mock_data(tmp_path, monkeypatch):
    from supsup_jax import train as train_lib

    monkeypatch.delenv("SUPSUP_DATA_DIR", raising=False)
    seen, original = [], train_lib.Trainer.train_task

    def train_task(self, state, images, *args, **kwargs):
        seen.append(type(images).__name__)
        return original(self, state, images, *args, **kwargs)

    monkeypatch.setattr(train_lib.Trainer, "train_task", train_task)
    with _mock(["imagenet2012"], 3000):
        res = train_and_evaluate(_config("gg_splitimagenet", "tiny"), tmp_path)
    _check_results(tmp_path, res)
    # The full-size path: training reads lazily decoded images, never a numpy copy.
    assert seen and set(seen) == {"LazySubset"}, seen


def _run(workdir, *extra, **popen):
    cmd = [sys.executable, "-m", "experiments.run",
           f"--config={os.path.join(CONFIGS, 'main_fashion.py')}:tiny", f"--workdir={workdir}",
           "--config.num_tasks=4", "--config.steps=30", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def _comparable(res):
    # Provenance records how each run was started (its command line names its workdir).
    return {k: v for k, v in res.items()
            if k not in ("wall_time_per_task", "versions", "provenance")}


def test_sigkill_and_resume_is_bit_identical(tmp_path, fashion_mnist):
    full, killed = tmp_path / "full", tmp_path / "killed"
    out, _ = _run(full).communicate(timeout=600)
    assert "tasks learned" in out, out
    # Kill with SIGKILL as soon as the first task's checkpoint exists.
    proc = _run(killed)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "1").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (killed / "checkpoints" / "4").exists()  # it stopped early
    out2, _ = _run(killed).communicate(timeout=600)
    a, b = results.load_results(full), results.load_results(killed)
    assert _comparable(a) == _comparable(b)
    # The printed table is what the results file gives back.
    assert results.format_table(b) in out2


def test_other_config_is_an_error_and_a_corrupt_checkpoint_is_skipped(tmp_path,
                                                                     fashion_mnist):
    from supsup_jax.checkpoint import CheckpointError

    config = _config("main_fashion", "tiny")
    config.num_tasks = 1
    train_and_evaluate(config, tmp_path)
    other = _config("main_fashion", "tiny")
    other.num_tasks = 1
    other.lr = 0.5
    with pytest.raises(CheckpointError, match="lr: 0.0001 vs 0.5"):
        train_and_evaluate(other, tmp_path)
    # Corrupt the stored metadata: detected; with no intact checkpoint left the run starts
    # over with a warning (the damaged one kept aside) and gives the same results.
    before = results.load_results(tmp_path)
    for root, _, files in os.walk(tmp_path / "checkpoints" / "1"):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "wb") as fh:
                fh.write(b"\0garbage")
    with pytest.warns(RuntimeWarning, match="checkpoint 1 .* corrupt"):
        again = train_and_evaluate(config, tmp_path)
    assert again["accuracy_matrix"] == before["accuracy_matrix"]
    assert len(os.listdir(tmp_path / "corrupt_checkpoints")) == 1
    json.dumps(results.load_results(tmp_path))  # results stay readable


def test_tensorboard_scalars_when_installed(tmp_path, fashion_mnist):
    pytest.importorskip("tensorboardX")  # a requirement; optional for users
    config = _config("main_fashion", "tiny")
    config.num_tasks = 2
    config.tensorboard = True
    train_and_evaluate(config, tmp_path)
    events = os.listdir(tmp_path / "tensorboard")
    assert any(e.startswith("events.out.tfevents") for e in events)
    assert os.path.getsize(tmp_path / "tensorboard" / events[0]) > 100


def test_tensorboard_with_checkpointed_evaluation(tmp_path, fashion_mnist):
    # Rows between evaluation points hold only the new task's accuracy (regression: the
    # scalars took the mean of a row with missing entries).
    pytest.importorskip("tensorboardX")
    config = _config("main_fashion", "tiny")
    config.num_tasks, config.eval_at, config.tensorboard = 3, (3,), True
    res = train_and_evaluate(config, tmp_path)
    assert res["accuracy_matrix"][1][0] is None and res["accuracy_matrix"][1][1] is not None
    assert res["backward_transfer"] is not None


def test_a_workdir_from_before_the_schema_grew_resumes_and_a_changed_field_does_not():
    from supsup_jax.checkpoint import CheckpointError
    from supsup_jax.runner import record

    c = _config("gnu_permuted", "tiny,fashion")
    # The fingerprint a run stored before base.py declared these fields (commit 7872ce1).
    old = json.loads(record.comparable(c))
    for k in (*record.ADDED_FIELDS, "hopfield"):
        parent, _, name = k.rpartition(".")
        del (old[parent] if parent else old)[name]
    assert "shortlist" not in old["inference"] and "interpolation" not in old
    record.check_resumable(json.dumps(old), c, "WORKDIR")
    with pytest.raises(CheckpointError, match=r"WORKDIR holds a run of a different config.*lr"):
        record.check_resumable(json.dumps({**old, "lr": 0.5}), c, "WORKDIR")
    c.method = "batche"  # a new field set to another value than old runs used: a mismatch
    with pytest.raises(CheckpointError, match="method: 'supsup' vs 'batche'.*--config.method="
                                              "supsup: add that to resume it"):
        record.check_resumable(json.dumps(old), c, "WORKDIR")
    # NNs runs from before the stream field were aligned; the offset does not apply to them.
    n = _config("gnu_2500", "tiny,fashion,nns")
    old = json.loads(record.comparable(n))
    for name in ("boundaries", "offset", "visits"):
        del old["nns"][name]
    with pytest.raises(CheckpointError, match=r"--config.nns.boundaries=aligned: add that"):
        record.check_resumable(json.dumps(old), n, "WORKDIR")
    n.nns.boundaries = "aligned"
    record.check_resumable(json.dumps(old), n, "WORKDIR")


def test_a_finished_run_extends_with_more_tasks_and_refuses_fewer(tmp_path, fashion_mnist):
    from supsup_jax.checkpoint import CheckpointError

    def config(num, variants="tiny,fashion", name="gnu_permuted"):
        c = _config(name, variants)
        c.num_tasks, c.eval_at, c.tensorboard = num, tuple(range(1, num + 1)), False
        return c

    train_and_evaluate(config(2), tmp_path / "a")
    extended = train_and_evaluate(config(3), tmp_path / "a")
    direct = train_and_evaluate(config(3), tmp_path / "b")
    for k in ("accuracy_matrix", "inferred_accuracy_matrix", "task_inference_matrix"):
        assert extended[k] == direct[k], k
    assert len(extended["wall_time_per_task"]) == 3
    with pytest.raises(CheckpointError, match="extended with more tasks, not shortened"):
        train_and_evaluate(config(2), tmp_path / "a")
    train_and_evaluate(config(2, "psp,tiny,fashion", "compare_permuted"), tmp_path / "p")
    with pytest.raises(CheckpointError, match="only SupSup runs in GG, GNu or GNs can be extended"):
        train_and_evaluate(config(3, "psp,tiny,fashion", "compare_permuted"), tmp_path / "p")


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_metrics_log_chunks_and_tasks_and_survive_a_redo(tmp_path, fashion_mnist):
    import shutil

    c = _config("gnu_permuted", "tiny,fashion")
    c.tensorboard = True
    res = train_and_evaluate(c, tmp_path)
    recs = _records(tmp_path)
    chunks = [r for r in recs if "step" in r]
    done = [r for r in recs if r.get("event") == "task_done"]
    per_task = c.steps // c.chunk_size
    assert [(r["task"], r["step"]) for r in chunks] == [
        (t, (i + 1) * c.chunk_size) for t in range(c.num_tasks) for i in range(per_task)]
    assert all(np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in chunks)
    assert [r["task"] for r in done] == list(range(c.num_tasks))
    assert done[-1]["gg/new_task"] == res["accuracy_matrix"][-1][-1]
    # Compilation is left out of steps/s: task 0's rate beats its steps over its whole time.
    assert done[0]["train/steps_per_second"] > c.steps / done[0]["train/seconds"]
    events = [os.path.join(tmp_path, "tensorboard", f)
              for f in os.listdir(tmp_path / "tensorboard")]
    data = b"".join(pathlib.Path(e).read_bytes() for e in events)
    assert b"train/loss" in data and b"train/accuracy" in data and b"config" in data
    # A redone task is logged once.
    shutil.rmtree(tmp_path / "checkpoints" / str(c.num_tasks))
    train_and_evaluate(c, tmp_path)
    again = [(r["task"], r.get("step")) for r in _records(tmp_path)]
    assert again == [(r["task"], r.get("step")) for r in recs]


def test_log_lines_are_plain_when_not_a_terminal(tmp_path, fashion_mnist):
    r = subprocess.run([sys.executable, "-m", "experiments.run",
                        "--config=gnu_permuted:tiny,fashion", f"--workdir={tmp_path}",
                        "--config.num_tasks=2", "--config.quiet=False"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr and "it/s" not in r.stderr
    assert "task 0: step 10/20, loss" in r.stderr and "task 1: " in r.stderr


USER_DATA = '''
import numpy as np
from supsup_jax.data import Dataset, PermutedStream


def quadrants(config):
    """4 classes: which 14x14 quadrant of a noisy image is bright."""
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 4, n).astype(np.int32)
        x = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
        for i, c in enumerate(y):
            r, q = divmod(int(c), 2)
            x[i, 14 * r:14 * r + 14, 14 * q:14 * q + 14] += 150
        return x, y

    (a, b), (c, d) = split(1500), split(300)
    return Dataset("quadrants", a, b, c, d, 4)


def permuted_quadrants(config):
    return PermutedStream(quadrants(config), config.num_tasks, seed=config.seed)


def not_a_dataset(config):
    return {"images": None}
'''


def test_the_runner_takes_a_users_dataset_or_stream(tmp_path, monkeypatch):
    from supsup_jax.errors import ConfigError

    (tmp_path / "userdata.py").write_text(USER_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    for field, spec in (("data_factory", "userdata:quadrants"),
                        ("stream_factory", "userdata:permuted_quadrants")):
        c = _config("gnu_permuted", "tiny")
        c.normalization, c.num_tasks, c.eval_at = "dataset", 2, (2,)
        setattr(c, field, spec)
        res = train_and_evaluate(c, tmp_path / field)
        assert res["provenance"]["dataset"] == "quadrants" and res["classes_per_task"] == 4
        assert min(res["accuracy_matrix"][1]) > 0.5  # chance 0.25
        if field == "data_factory":
            assert res["provenance"]["data_source"] == "data_factory userdata:quadrants"
    c = _config("gnu_permuted", "tiny")
    for spec, phrase in (("userdata", "'module:function'"), ("nosuch:f", "cannot import"),
                         ("userdata:nosuch", "cannot import"),
                         ("userdata:not_a_dataset", "not a supsup_jax.data.Dataset")):
        c.data_factory = spec
        with pytest.raises(ConfigError, match=phrase):
            train_and_evaluate(c, tmp_path / "bad")


def test_every_entry_point_takes_config_fields(capsys):
    from experiments import compare, gnu_permuted

    args = gnu_permuted.parse_args(["--config.num_tasks=3", "--config.stream=rotated",
                                    "--config.lr=0.5", "--config.layers=layers/0/kernel"])
    assert (args.num_tasks, args.stream, args.lr, args.layers) == (
        3, "rotated", 0.5, "layers/0/kernel")
    assert args.batch_size == 128  # defaults kept
    for bad, phrase in ((["--num_tasks", "3"], "expected --config.NAME=VALUE"),
                        (["--config.nope=1"], "no option 'nope'"),
                        (["--config.num_tasks=x"], "not a int"),
                        (["--config.stream=spiral"], "choose one of")):
        with pytest.raises(SystemExit) as e:
            gnu_permuted.parse_args(bad)
        assert e.value.code == 2 and phrase in capsys.readouterr().err
    extra = compare.parse_overrides(["--config.num_tasks=5", "--config.eval_at=(1, 5)",
                                     "--config.inference.m=128", "--config.interpolation=nearest"])
    assert extra == {"num_tasks": 5, "eval_at": (1, 5), "inference.m": 128,
                     "interpolation": "nearest"}
    c = compare.method_config("experiments.configs.compare_permuted", "supsup,rotated", {},
                              extra=extra)
    assert (c.num_tasks, c.eval_at, c.inference.m, c.interpolation) == (5, (1, 5), 128,
                                                                        "nearest")
    with pytest.raises(ValueError, match="no config field 'inference.nope'"):
        compare.check_overrides("rotated_fashion", False, {"inference.nope": 1})
