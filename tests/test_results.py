"""Results files, table and plots against a small hand-made results dict."""

import copy
import csv
import json
import math

import numpy as np
import pytest

from supsup_jax import plots
from supsup_jax import results as results_lib

NAN = float("nan")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _gnu_results() -> dict:
    """T=4, rows 0, 1 and 3 evaluated, row 2 not (a row of nulls in one matrix, a null row in
    another); NaN above the diagonal and in a scalar to exercise the NaN -> null conversion.

    The values are exact binary fractions so that the hand-computed means are exact.
    """
    return {
        "config": {"name": "toy GNu", "lr": 0.1},
        "seed": 0,
        "versions": {"jax": "0.10.2"},
        "device": "cpu",
        "scenario": "GNu",
        "num_tasks": 4,
        "accuracy_matrix": [
            [0.5, NAN, None, None],
            [0.75, 1.0, None, None],
            [None, None, None, None],
            [0.5, 0.75, 0.25, 1.0],
        ],
        "inferred_accuracy_matrix": [
            [0.5, None, None, None],
            [0.5, 1.0, None, None],
            None,
            [0.25, 0.5, 0.25, 1.0],
        ],
        "task_inference_matrix": np.array([
            [1.0, NAN, NAN, NAN],
            [0.75, 1.0, NAN, NAN],
            [NAN, NAN, NAN, NAN],
            [0.5, 1.0, 0.75, 0.25],
        ]),
        "task_inference_accuracy": 0.625,
        "average_accuracy": 0.5,
        "gg_average_accuracy": 0.625,
        "backward_transfer": 0.0,
        "forgetting": NAN,
        "bytes_per_task": 1234.5,
        "wall_time_per_task": [1.5, 2.0, 0.25, 0.25],
        "masks_allocated": 4,
    }


def _gg_results() -> dict:
    r = _gnu_results()
    r.update(scenario="GG", inferred_accuracy_matrix=None, task_inference_matrix=None,
             task_inference_accuracy=None, average_accuracy=0.625, masks_allocated=None)
    r["config"] = {}
    return r


def _expected_json(r: dict) -> dict:
    """What the file must hold: NaN -> None, arrays -> lists, a row with no defined cell -> None
    (built by hand, not by the code under test)."""
    out = copy.deepcopy(r)
    out["accuracy_matrix"][0][1] = None
    out["accuracy_matrix"][2] = None
    if out["task_inference_matrix"] is not None:
        out["task_inference_matrix"] = [[None if math.isnan(v) else v for v in row]
                                        for row in r["task_inference_matrix"].tolist()]
        out["task_inference_matrix"][2] = None
    out["forgetting"] = None
    return out


def _raise_on_constant(name):
    raise AssertionError(f"non-strict JSON constant {name}")


def test_write_load_round_trip_and_strict_json(tmp_path):
    r = _gnu_results()
    path = results_lib.write_results(tmp_path / "run", r)
    assert path == tmp_path / "run" / "results.json"
    text = path.read_text()
    json.loads(text, parse_constant=_raise_on_constant)
    # One line per matrix row, whatever T: indent=2 alone would give one line per cell.
    assert "\n    [0.5, 0.75, 0.25, 1.0]\n" in text and "\n    null,\n" in text
    assert '\n  "config": {\n    "name": "toy GNu",' in text
    expected = _expected_json(r)
    assert results_lib.load_results(tmp_path / "run") == expected
    assert results_lib.load_results(path) == expected
    # No temp files left behind by the atomic writes.
    assert sorted(p.name for p in path.parent.iterdir()) == ["accuracy.csv", "results.json"]


def test_csv_rows_by_hand(tmp_path):
    results_lib.write_results(tmp_path, _gnu_results())
    with open(tmp_path / "accuracy.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["learned_tasks", "task", "gg_accuracy", "inferred_accuracy", "task_inference_accuracy"],
        ["1", "0", "0.5", "0.5", "1.0"],
        ["2", "0", "0.75", "0.5", "0.75"],
        ["2", "1", "1.0", "1.0", "1.0"],
        ["4", "0", "0.5", "0.25", "0.5"],
        ["4", "1", "0.75", "0.5", "1.0"],
        ["4", "2", "0.25", "0.25", "0.75"],
        ["4", "3", "1.0", "1.0", "0.25"],
    ]
    results_lib.write_results(tmp_path / "gg", _gg_results())
    with open(tmp_path / "gg" / "accuracy.csv", newline="") as f:
        rows = list(csv.reader(f))
    # Missing values are empty cells.
    assert rows[1] == ["1", "0", "0.5", "", ""] and len(rows) == 1 + 1 + 2 + 4


def test_matrix_nan_placement():
    r = _gnu_results()
    gg = results_lib.matrix(r, "accuracy_matrix")
    assert gg.dtype == np.float64 and gg.shape == (4, 4)
    expected_nan = np.triu(np.ones((4, 4), bool), k=1)
    expected_nan[2] = True
    np.testing.assert_array_equal(np.isnan(gg), expected_nan)
    assert gg[3, 2] == 0.25 and gg[1, 0] == 0.75
    inferred = results_lib.matrix(r, "inferred_accuracy_matrix")  # a null row
    np.testing.assert_array_equal(np.isnan(inferred), expected_nan)
    assert results_lib.matrix(_gg_results(), "inferred_accuracy_matrix") is None
    assert results_lib.evaluated_rows(r) == [0, 1, 3]
    with pytest.raises(ValueError, match="row 1"):
        results_lib.matrix({"m": [[0.5, None], [0.5]]}, "m")


def test_format_table_round_trip_and_means(tmp_path):
    r = _gnu_results()
    results_lib.write_results(tmp_path, r)
    table = results_lib.format_table(r)
    assert results_lib.format_table(results_lib.load_results(tmp_path)) == table
    lines = table.splitlines()
    by_tasks = {line.split()[0]: line.split()[1:] for line in lines[1:4]}
    # Row 1: GG (0.75 + 1.0) / 2, inferred (0.5 + 1.0) / 2, inference (0.75 + 1.0) / 2.
    assert by_tasks["2"] == ["0.8750", "0.7500", "0.8750"]
    # Row 3: GG 2.5 / 4, inferred 2.0 / 4, inference 2.5 / 4. Row 2 (not evaluated) is absent.
    assert by_tasks["4"] == ["0.6250", "0.5000", "0.6250"] and "3" not in by_tasks
    assert "scenario                 GNu" in table
    assert any(line.startswith("forgetting") and line.endswith(" -") for line in lines)
    assert any(line.startswith("total wall time") and line.endswith("4.0000") for line in lines)
    gg_table = results_lib.format_table(_gg_results())
    assert gg_table.splitlines()[1].split() == ["1", "0.5000", "-", "-"]


def _assert_png(path):
    data = path.read_bytes()
    assert len(data) > 0 and data.startswith(PNG_SIGNATURE), path


def test_plots_gnu(tmp_path):
    paths = plots.write_plots(_gnu_results(), tmp_path)
    assert [p.name for p in paths] == ["accuracy_vs_tasks.png", "accuracy_matrix.png",
                                       "task_inference.png"]
    for p in paths:
        _assert_png(p)


def test_plots_gg_has_no_task_inference(tmp_path):
    paths = plots.write_plots(_gg_results(), tmp_path)
    assert [p.name for p in paths] == ["accuracy_vs_tasks.png", "accuracy_matrix.png"]
    for p in paths:
        _assert_png(p)
    assert not (tmp_path / "task_inference.png").exists()
    assert plots.plot_task_inference(_gg_results(), tmp_path / "ti.png") is None


def test_load_results_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        results_lib.load_results(missing)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run"):
        results_lib.load_results(empty)
    corrupt = tmp_path / "bad" / "results.json"
    corrupt.parent.mkdir()
    corrupt.write_text('{"seed": 0, "accuracy_matrix": [[0.5')
    with pytest.raises(ValueError, match="bad"):
        results_lib.load_results(corrupt.parent)
    corrupt.write_text('{"forgetting": NaN}')  # Python's json would accept this by default
    with pytest.raises(ValueError, match="corrupt results file"):
        results_lib.load_results(corrupt)


def test_write_rejects_unstorable_values(tmp_path):
    with pytest.raises(TypeError, match=r"results\['config'\]\['fn'\]"):
        results_lib.write_results(tmp_path, {"config": {"fn": print}})


def test_method_labels_and_fixed_colours():
    def res(method="supsup", scenario="GG", **config):
        inference = config.pop("inference", None)
        return {"scenario": scenario, "config": {"method": method, "inference": inference or {},
                                                  **config}}

    one_shot_g = {"method": "one_shot", "objective": "g"}
    assert plots.method_label(res(scenario="GNu", inference=one_shot_g)) == \
        "SupSup (GNu, One-Shot G)"
    assert plots.method_label(res(scenario="GNu", inference={"method": "binary",
                                                              "objective": "h"})) == \
        "SupSup (GNu, Binary H)"
    assert plots.method_label(res(transfer=True)) == "SupSup Transfer (GG)"
    assert plots.method_label(res("batche", rand_w=True)) == "BatchE Rand W (GG)"
    assert plots.method_label(res("psp")) == "PSP (GG)"
    assert plots.method_label(res("batche", "GNu", inference=one_shot_g)) == \
        "BatchE (GNu, One-Shot G)"
    # The same method has the same colour in every figure; methods differ.
    assert plots.method_color("BatchE (GG)") == plots.method_color("BatchE (GG)") != \
        plots.method_color("PSP (GG)")
    assert plots.method_color("Something new") == plots.method_color("Something new")


def test_figures_share_the_y_range_show_chance_and_cell_values():
    r = _gnu_results()
    r["classes_per_task"] = 10
    fig = plots.accuracy_vs_tasks_figure(r)
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 1.0)
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["GNu, task inferred", "GG, task given", "chance (1/10)"]
    chance = [ln for ln in ax.get_lines() if ln.get_label().startswith("chance")][0]
    assert chance.get_ydata()[0] == pytest.approx(0.1)
    assert plots.accuracy_vs_tasks_figure(r, ylim=(0.5, 0.8)).axes[0].get_ylim() == (0.5, 0.8)
    m = plots.accuracy_matrix_figure(r)
    texts = [t.get_text() for a in m.axes for t in a.texts]
    # Every defined cell of both matrices (7 + 7), with its value.
    assert len(texts) == 14 and "0.75" in texts and "0.25" in texts
    assert plots.chance_level(_gg_results()) is None  # not recorded: no line


def test_chance_level_of_runs_written_before_the_field():
    assert plots.chance_level({"config": {"stream": "permuted", "dataset": "fashion_mnist"}}) \
        == pytest.approx(0.1)
    assert plots.chance_level({"config": {"stream": "split", "classes_per_task": 5}}) == 0.2
    assert plots.chance_level({"config": {"stream": "split_mnist"}}) == 0.5
    assert plots.chance_level({"config": {"stream": "permuted", "dataset": "cifar10x"}}) is None
    assert plots.chance_level({"classes_per_task": 4, "config": {}}) == 0.25


def test_long_runs_store_their_diagonal_rows_sparsely(tmp_path):
    # A 2500-task run measures only the new task after most tasks: such rows are stored as
    # {"i": value} (linear in the tasks), and come back as full rows.
    n = 40
    acc = [[None] * n for _ in range(n)]
    for t in range(n):
        acc[t][t] = 0.5 + t / 100
    acc[19][:20] = [0.25] * 20  # a checkpoint row, dense
    acc[n - 1] = [0.75] * n
    r = _gnu_results()
    r.update(num_tasks=n, accuracy_matrix=acc, inferred_accuracy_matrix=None,
             task_inference_matrix=None)
    path = results_lib.write_results(tmp_path, r)
    text = path.read_text()
    assert '\n    {"3": 0.53},\n' in text and "\n    [0.25, 0.25," in text
    loaded = results_lib.load_results(tmp_path)
    assert loaded["accuracy_matrix"] == acc
    np.testing.assert_array_equal(results_lib.matrix(loaded, "accuracy_matrix"),
                                  np.array(acc, dtype=float))
    lines = (tmp_path / "accuracy.csv").read_text().splitlines()[1:]
    assert len(lines) == n - 2 + 20 + n  # defined cells only: diagonal + two full rows
    assert lines[3].startswith("4,3,0.53,")
    bad = json.loads(text)
    bad["accuracy_matrix"][3] = {"x": 1.0}
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"corrupt results file .*accuracy_matrix row 3"):
        results_lib.load_results(tmp_path)


def test_checkpoint_rows_pack_the_new_task_alone():
    from supsup_jax.runner import record

    rows = {"0": {"gg": [0.5]}, "3": {"gg": [None, None, None, 0.7], "inferred": [None] * 4},
            "4": {"gg": [0.1, 0.2, None, 0.4, 0.5]}}
    packed = record.pack_rows(rows)
    assert packed["3"]["gg"] == {"new": 0.7} and packed["4"] == rows["4"]
    assert packed["0"] == rows["0"] and packed["3"]["inferred"] == [None] * 4
    assert record.unpack_rows(json.loads(json.dumps(packed))) == rows
    assert record.unpack_rows(rows) == rows  # checkpoints written before packing


@pytest.mark.parametrize("bad,match", [
    ([[0.5, None], [0.1, 0.2], [0.3]], "square matrix"),  # ragged
    (np.ones((4, 3)), "square matrix"),
    ([[0.5, None], ["0.2", 0.2]], "square matrix"),  # a string is no accuracy
])
def test_malformed_matrices_are_refused(tmp_path, bad, match):
    r = _gnu_results()
    r["accuracy_matrix"] = bad
    with pytest.raises(ValueError, match=match):
        results_lib.write_results(tmp_path, r)
    assert not (tmp_path / "results.json").exists()
