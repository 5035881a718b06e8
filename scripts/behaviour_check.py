"""Fingerprints of what the runner computes, to prove a refactoring changes no result.

For the main job and one ``tiny,fashion`` config of each method (SupSup GNu, NNs, BatchE GG and
One-Shot, PSP, separate heads, lower and upper bound, HopSupSup) it runs the experiment in a
temporary workdir and records results.json's accuracy matrices and a SHA-256 of every array of
the final state (the checkpointed bank, method state or HopSupSup's stored masks).

    python scripts/behaviour_check.py --write tests/data/behaviour_before.json   # before
    python scripts/behaviour_check.py --check tests/data/behaviour_before.json   # after

Bit-identity holds for the same machine, kernel variant and package versions (float sums are
ordered by the CPU's vector width); the file records the CPU it was written on.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (name, config module, variants, overrides)
CASES = [
    ("main_job", "main_fashion", None, {}),
    ("supsup_gnu", "gnu_permuted", "tiny,fashion", {}),
    # The before-file predates the continuous NNs stream: compare the first round's stream.
    ("supsup_nns", "gnu_2500", "tiny,fashion,nns", {"nns.boundaries": "aligned"}),
    ("batche_gg", "compare_permuted", "batche,tiny,fashion", {}),
    ("batche_oneshot", "compare_permuted", "batche,oneshot,tiny,fashion", {}),
    ("psp_gg", "compare_permuted", "psp,tiny,fashion", {}),
    ("separate_heads", "split_mnist", "tiny,fashion",
     {"scenario": "GG", "method": "separate_heads"}),
    ("lower_bound", "split_mnist", "tiny,fashion", {"scenario": "GG", "method": "lower_bound"}),
    ("upper_bound", "split_mnist", "tiny,fashion", {"scenario": "GG", "method": "upper_bound"}),
    ("hopsupsup", "hopsupsup", "tiny,fashion", {}),
]
MATRICES = ("accuracy_matrix", "inferred_accuracy_matrix", "task_inference_matrix",
            "masks_allocated")


def _config(module, variants, overrides):
    c = importlib.import_module(f"experiments.configs.{module}").get_config(variants)
    with c.unlocked():
        for k, v in overrides.items():
            parent, _, name = k.rpartition(".")
            setattr(c[parent] if parent else c, name, v)
    c.quiet = True
    return c


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _state_digest(workdir: str) -> str:
    """SHA-256 of the latest checkpoint's arrays (or HopSupSup's stored masks)."""
    npz = os.path.join(workdir, "hopsupsup_tasks.npz")
    if os.path.exists(npz):
        with np.load(npz) as z:
            return _digest({k: z[k] for k in z.files if "/" in k})
    import jax
    import orbax.checkpoint as ocp

    directory = os.path.join(workdir, "checkpoints")
    with ocp.CheckpointManager(directory, item_names=("state", "meta")) as m:
        step = m.latest_step()
        state = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = state["state"]
    # HopSupSup stores its masks, named as in its earlier npz.
    if isinstance(state, dict) and set(state) == {"masks"}:
        masks = state["masks"]
        masks = [masks[k] for k in sorted(masks, key=int)] if isinstance(masks, dict) else masks
        return _digest({f"{t}/{p}": np.asarray(a) for t, m in enumerate(masks)
                        for p, a in m.items()})
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return _digest({jax.tree_util.keystr(p): np.asarray(a) for p, a in flat})


def _rows(m):
    """A matrix with an unevaluated row as a list of None (the first round's HopSupSup wrote
    None for the whole row)."""
    if m is None or not isinstance(m, list):
        return m
    width = len(m)
    return [[None] * width if r is None else r for r in m]


def run(names=None) -> dict:
    from supsup_jax.runner import train_and_evaluate

    out = {}
    for name, module, variants, overrides in CASES:
        if names and name not in names:
            continue
        with tempfile.TemporaryDirectory() as workdir:
            t0 = time.perf_counter()
            res = train_and_evaluate(_config(module, variants, overrides), workdir)
            out[name] = {**{k: _rows(res.get(k)) for k in MATRICES},
                         "state_sha256": _state_digest(workdir)}
            print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="FILE")
    g.add_argument("--check", metavar="FILE")
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from common import cpu_description

    got = run(args.only)
    if args.write:
        with open(args.write, "w") as f:
            json.dump({"cpu": cpu_description(), "cases": got}, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {args.write}")
        return
    with open(args.check) as f:
        want = json.load(f)
    print(f"reference written on: {want['cpu']}\nthis machine:         {cpu_description()}")
    want = {n: {k: _rows(v) for k, v in case.items()} for n, case in want["cases"].items()}
    bad = [n for n in got if got[n] != want.get(n)]
    for n in got:
        print(f"{n}: {'DIFFERENT' if n in bad else 'identical'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
