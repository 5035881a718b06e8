"""A 2-process jax.distributed run on localhost: data-parallel training of two tasks, one
results file written by process 0 only."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(config: str, *flags: str) -> list[tuple[int, str]]:
    """Run experiments.run as a 2-process jax.distributed job; ``(returncode, output)`` each."""
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.run",
         f"--config={os.path.join(ROOT, 'experiments', 'configs', config)}", *flags,
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outs, strict=True)]


def test_two_processes_train_two_tasks_and_write_one_results_file(tmp_path, fashion_mnist):
    runs = _two_processes("main_fashion.py:tiny", "--config.num_tasks=2", f"--workdir={tmp_path}")
    outs = [out for _, out in runs]
    for rc, out in runs:
        assert rc == 0, out[-3000:]
    assert "tasks learned" in outs[0] and "tasks learned" not in outs[1]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["num_tasks"] == 2 and len(res["accuracy_matrix"]) == 2
    assert min(res["accuracy_matrix"][1]) > 0.5  # both tasks learned (10 classes)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_two_processes_refuse_nns_before_writing_anything(tmp_path):
    for rc, out in _two_processes("gnu_2500.py:tiny,fashion,nns", f"--workdir={tmp_path / 'run'}"):
        assert rc == 1, out[-3000:]
        assert "error: scenario NNs trains on one process only" in out, out[-3000:]
    assert not (tmp_path / "run").exists()


def test_baselines_and_hopsupsup_refuse_several_processes(monkeypatch):
    import jax
    import pytest

    from experiments.configs import compare_permuted, hopsupsup, main_fashion
    from supsup_jax.errors import ConfigError
    from supsup_jax.runner import build

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for c in (compare_permuted.get_config("psp,tiny"), compare_permuted.get_config("batche"),
              hopsupsup.get_config("tiny")):
        with pytest.raises(ConfigError, match=f"method '{c.method}' trains on one process"):
            build.check_method(c)
    build.check_method(main_fashion.get_config("tiny"))  # SupSup GNu is data parallel
