"""Re-evaluating a SupSup run's masks with another task inference, against full runs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import gnu_permuted
from supsup_jax.checkpoint import CheckpointError
from supsup_jax.errors import ConfigError
from supsup_jax.runner import learners, train_and_evaluate
from supsup_jax.runner.reevaluate import ROWS_FILE, reevaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATRICES = ("accuracy_matrix", "inferred_accuracy_matrix", "task_inference_matrix")


def _config(**inference):
    c = gnu_permuted.get_config("tiny,fashion")
    c.num_tasks, c.eval_at = 4, (2, 4)  # rows 0 and 2 evaluate the new task alone
    c.steps = 3  # masks close to their random start: task inference errs among many
    c.inference.m = 1
    for k, v in inference.items():
        setattr(c.inference, k, v)
    return c


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("source"))
    return workdir, train_and_evaluate(_config(objective="g"), workdir)


def _same(a, b):
    for k in MATRICES:
        np.testing.assert_array_equal(np.array(a[k], float), np.array(b[k], float), err_msg=k)
    assert a["task_inference_accuracy"] == b["task_inference_accuracy"]
    assert a["forgetting"] == b["forgetting"]


def test_own_config_reproduces_the_run(source, tmp_path):
    src, ran = source
    res = reevaluate(_config(objective="g"), src, tmp_path)
    _same(res, ran)
    assert res["reevaluated_from"] == {"workdir": os.path.abspath(src), "tasks": 4}
    assert res["wall_time_per_task"] == ran["wall_time_per_task"]  # the source's training


@pytest.mark.parametrize("inference", [{"objective": "h"},
                                       {"method": "binary", "objective": "h", "m": 8}])
def test_other_inference_equals_a_full_run_with_it(source, tmp_path, inference):
    # The reference trains the same masks again (same keys) and evaluates as it goes.
    src, ran = source
    direct = train_and_evaluate(_config(**inference), tmp_path / "direct")
    res = reevaluate(_config(**inference), src, tmp_path / "re")
    _same(res, direct)
    np.testing.assert_array_equal(np.array(res["accuracy_matrix"], float),
                                  np.array(ran["accuracy_matrix"], float))  # same masks: GG


def test_an_interrupted_reevaluation_resumes_from_its_rows(source, tmp_path, monkeypatch):
    src, _ = source
    first = reevaluate(_config(objective="h"), src, tmp_path)
    os.remove(tmp_path / "results.json")

    def row(*args, **kwargs):
        raise AssertionError("a saved row was evaluated again")

    monkeypatch.setattr(learners.SupSupLearner, "row", row)
    _same(reevaluate(_config(objective="h"), src, tmp_path), first)
    with pytest.raises(CheckpointError, match=ROWS_FILE):  # the rows of another config
        reevaluate(_config(objective="g"), src, tmp_path)


def test_more_tasks_evaluate_only_the_new_rows(source, tmp_path, monkeypatch):
    # A copy of the run taken after 3 of its 4 tasks, re-evaluated; then the run itself into
    # the same workdir: rows 0-2 are the copy's, only row 3 is evaluated.
    src, _ = source
    partial = tmp_path / "partial"
    shutil.copytree(src, partial)
    shutil.rmtree(partial / "checkpoints" / "4")
    reevaluate(_config(objective="h"), partial, tmp_path / "re")
    evaluated, row = [], learners.SupSupLearner.row
    monkeypatch.setattr(learners.SupSupLearner, "row",
                        lambda self, state, t, *a, **k: evaluated.append(t) or row(
                            self, state, t, *a, **k))
    res = reevaluate(_config(objective="h"), src, tmp_path / "re")
    assert evaluated == [3]
    monkeypatch.undo()
    _same(res, reevaluate(_config(objective="h"), src, tmp_path / "fresh"))
    with pytest.raises(CheckpointError, match="4 tasks, more than the 3"):
        reevaluate(_config(objective="h"), partial, tmp_path / "re")
    # Rows of other masks are refused (the file's digest edited, as another run's would be).
    path = tmp_path / "re" / ROWS_FILE
    saved = json.loads(path.read_text())
    saved["fingerprint"]["bank"] = "0" * 64
    path.write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="other masks than this run's first 4"):
        reevaluate(_config(objective="h"), src, tmp_path / "re")


def test_bad_requests_are_named(source, tmp_path):
    src, _ = source
    other = _config(objective="h")
    other.lr = 0.5
    with pytest.raises(CheckpointError, match="lr: 0.0001 vs 0.5"):
        reevaluate(other, src, tmp_path / "a")
    with pytest.raises(ConfigError, match="overwrite its source"):
        reevaluate(_config(), src, src)
    shutil.copytree(src, tmp_path / "trained")
    with pytest.raises(ConfigError, match="holds a training run"):
        reevaluate(_config(), src, tmp_path / "trained")
    gg = _config()
    gg.scenario = "GG"
    with pytest.raises(ConfigError, match="scenario 'GG'"):
        reevaluate(gg, src, tmp_path / "b")
    with pytest.raises(CheckpointError, match="no run"):
        reevaluate(_config(), tmp_path / "empty", tmp_path / "c")
    partial = tmp_path / "partial"  # a run stopped after 3 of its 4 tasks
    shutil.copytree(src, partial)
    shutil.rmtree(partial / "checkpoints" / "4")
    late = _config()
    late.eval_at = (4,)
    with pytest.raises(ConfigError, match="finished 3 tasks, before the first evaluation point 4"):
        reevaluate(late, partial, tmp_path / "d")
    assert not os.path.exists(tmp_path / "a" / "results.json")


def test_command_line(source, tmp_path):
    src, _ = source
    cmd = [sys.executable, "-m", "experiments.run", "--config=gnu_permuted:tiny,fashion",
           "--config.num_tasks=4", "--config.eval_at=(2,4)", "--config.steps=3",
           "--config.inference.m=1", "--config.inference.objective=h",
           f"--workdir={tmp_path / 'cli'}", f"--reevaluate={src}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "cli" / "results.json") as f:
        assert json.load(f)["reevaluated_from"]["tasks"] == 4
    out = subprocess.run(cmd[:-1] + [f"--reevaluate={tmp_path / 'nothing'}"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "no run" in out.stderr
