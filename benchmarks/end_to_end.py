"""End to end through the runner (issue 6, item 4), each run in its own process.

1. Wall time per task of the PermutedFashionMNIST protocol: FC 1024-1024 (output 500), 1000
   steps of batch 128 per task, GNu evaluation of every learned task after the last one
   (``experiments/configs/main_fashion.py`` with ``--tasks`` tasks).
2. Peak resident memory of a 250-task LeNet 300-100 GNu run (``gnu_2500.py:fashion,tiny`` with
   250 tasks, a few steps per task, every task evaluated with One-Shot after the last), and the
   bytes its mask bank holds.

    python benchmarks/end_to_end.py --out benchmarks/results/end_to_end.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
from common import (  # benchmarks/ is on the path when run as a script
    cpu_description,
    device,
    write_result,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs the runner in-process and reports this process's peak RSS (KiB on Linux) on exit.
_CHILD = """
import resource, runpy, sys
sys.argv = ["experiments.run"] + sys.argv[1:]
try:
    runpy.run_module("experiments.run", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(config: str, overrides: dict, workdir: str) -> dict:
    args = [f"--config={config}", f"--workdir={workdir}"]
    args += [f"--config.{k}={v}" for k, v in overrides.items()]
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=ROOT, text=True,
                          capture_output=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{proc.stderr[-3000:]}")
    rss = int(proc.stdout.rsplit("PEAK_RSS_KIB", 1)[1].split()[0])
    with open(os.path.join(workdir, "results.json")) as f:
        res = json.load(f)
    return {"config": config, "overrides": overrides, "process_wall_s": wall,
            "peak_rss_bytes": rss * 1024, "results": res}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=3, help="tasks of the FC 1024-1024 protocol")
    p.add_argument("--memory-tasks", type=int, default=250)
    p.add_argument("--memory-steps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/end_to_end.json")
    args = p.parse_args(argv)

    out = {"benchmark": "end_to_end", "device": device(), **cpu_description(),
           "jax": jax.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        r = run("experiments/configs/main_fashion.py",
                {"num_tasks": args.tasks, "eval_at": f"({args.tasks},)"}, f"{tmp}/protocol")
        wall = r["results"]["wall_time_per_task"]
        out["protocol"] = {
            "model": "fc1024", "steps_per_task": r["results"]["config"]["steps"],
            "tasks": args.tasks, "wall_time_per_task_s": wall,
            "mean_wall_time_per_task_s": sum(wall) / len(wall),
            "process_wall_s": r["process_wall_s"], "peak_rss_bytes": r["peak_rss_bytes"]}
        print(json.dumps(out["protocol"]), flush=True)

        n = args.memory_tasks
        r = run("experiments/configs/gnu_2500.py:fashion,tiny",
                {"num_tasks": n, "steps": args.memory_steps, "chunk_size": args.memory_steps,
                 "eval_at": f"({n},)"}, f"{tmp}/memory")
        res = r["results"]
        out["memory"] = {
            "model": "lenet300_100", "tasks": n, "steps_per_task": args.memory_steps,
            "peak_rss_bytes": r["peak_rss_bytes"], "process_wall_s": r["process_wall_s"],
            "bank_bytes_per_task": res["bytes_per_task"],
            "gnu_average_accuracy": res["average_accuracy"],
            "task_inference_accuracy": res["task_inference_accuracy"],
            "mean_wall_time_per_task_s": sum(res["wall_time_per_task"]) / n}
        print(json.dumps(out["memory"]), flush=True)
    write_result(args.out, out)


if __name__ == "__main__":
    main(sys.argv[1:])
