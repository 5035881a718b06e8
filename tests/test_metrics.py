"""Metrics against hand-computed small matrices."""

import numpy as np
import pytest

from supsup_jax import metrics

# R[t, i]: tasks 0..2.
R = metrics.accuracy_matrix([[0.9], [0.8, 0.95], [0.7, 0.85, 0.6]])


def test_accuracy_matrix_layout():
    assert R.shape == (3, 3) and np.isnan(R[0, 1]) and R[2, 1] == 0.85
    with pytest.raises(ValueError, match="row 1"):
        metrics.accuracy_matrix([[0.9], [0.8]])


def test_average_accuracy_bwt_forgetting_by_hand():
    assert metrics.average_accuracy(R) == pytest.approx((0.7 + 0.85 + 0.6) / 3)
    # BWT: ((0.7 - 0.9) + (0.85 - 0.95)) / 2 = -0.15
    assert metrics.backward_transfer(R) == pytest.approx(-0.15)
    # Forgetting: task 0 best before the end max(0.9, 0.8) = 0.9 -> 0.2; task 1: 0.95 -> 0.1
    assert metrics.forgetting(R) == pytest.approx(0.15)
    # A later peak counts for forgetting, not for BWT.
    r = metrics.accuracy_matrix([[0.5], [0.9, 0.8], [0.6, 0.8, 0.7]])
    assert metrics.forgetting(r) == pytest.approx(((0.9 - 0.6) + 0.0) / 2)
    assert metrics.backward_transfer(r) == pytest.approx(((0.6 - 0.5) + 0.0) / 2)
    # A row evaluated only on its diagonal (a checkpointed run): forgetting skips the gap.
    gap = np.array([[0.9, np.nan, np.nan], [np.nan, 0.95, np.nan], [0.7, 0.85, 0.6]])
    assert metrics.backward_transfer(gap) == pytest.approx(-0.15)
    assert metrics.forgetting(gap) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="diagonal"):
        metrics.backward_transfer(np.array([[0.9, np.nan], [np.nan, 0.5]]))
    single = metrics.accuracy_matrix([[0.8]])
    assert metrics.backward_transfer(single) == 0.0 and metrics.forgetting(single) == 0.0


def test_task_inference_accuracy_and_bytes():
    assert metrics.task_inference_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    with pytest.raises(ValueError):
        metrics.task_inference_accuracy([0], [0, 1])
    masks = {"a": np.zeros((13, 7)), "b": np.zeros((8,))}
    assert metrics.bytes_per_task(masks) == 12 + 1
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy(np.zeros((2, 3)))


def test_bank_bytes_per_task():
    from supsup_jax import bank as bank_lib

    bank = bank_lib.MaskBank.create({"w": np.zeros((784, 300))}, capacity=4)
    bank = bank.add({"w": np.ones((784, 300), bool)})
    bank = bank.add({"w": np.zeros((784, 300), bool)})
    # 4 slots of 29,400 bytes held for 2 tasks.
    assert metrics.bytes_per_task(bank) == 4 * 29_400 / 2
