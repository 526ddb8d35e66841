"""Exact intervals, paired tests, Holm's adjustment and the selection halves (measure.intervals),
and their use in the scores every table is read from."""

from __future__ import annotations

import numpy as np
import pytest

from omniglot_inversion.measure import evaluation, intervals


def test_rates_get_exact_intervals_that_do_not_collapse_at_zero():
    per_image = {"top1": np.zeros(104), "mse": np.full(104, 0.05)}
    summary = evaluation.summarize(per_image)
    # 0 of 104: the percentile bootstrap gives [0, 0]; Clopper-Pearson's upper end is 1 - 0.025^(1/104)
    assert summary["top1"] == {"mean": 0.0, "low": 0.0, "high": pytest.approx(1 - 0.025 ** (1 / 104))}
    assert summary["mse"]["low"] == summary["mse"]["high"] == pytest.approx(0.05)
    four = evaluation.summarize({"top1": np.r_[np.ones(4), np.zeros(100)]})["top1"]
    assert (four["low"], four["high"]) == pytest.approx(intervals.clopper_pearson(4, 104))
    assert four["low"] == pytest.approx(0.0106, abs=1e-4) and four["high"] == pytest.approx(0.0956, abs=1e-4)


def test_holm_multiplies_the_k_th_smallest_by_m_minus_k_plus_one_and_stays_monotone():
    adjusted = intervals.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adjusted == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    assert intervals.holm({"x": 0.7, "y": 0.6}) == pytest.approx({"x": 1.0, "y": 1.0})


def test_paired_tests_are_one_sided_and_exact_for_hits():
    attack, baseline = np.r_[np.ones(10), np.zeros(90)], np.zeros(100)
    assert intervals.paired_p_value(attack, baseline, higher_is_better=True, binary=True) == pytest.approx(0.5 ** 10)
    # the other direction: the attack is worse, nothing to reject
    assert intervals.paired_p_value(baseline, attack, higher_is_better=True, binary=True) == pytest.approx(1.0)
    assert intervals.paired_p_value(baseline, baseline, higher_is_better=True, binary=True) == 1.0
    rng = np.random.default_rng(1)
    mse = rng.uniform(0.05, 0.07, 200)
    assert intervals.paired_p_value(mse - 0.002, mse, higher_is_better=False, binary=False) < 1e-10
    assert intervals.paired_p_value(mse + 0.002, mse, higher_is_better=False, binary=False) > 0.99


def test_the_selection_halves_alternate_and_cover_the_set_once():
    select, report = intervals.selection_halves(7)
    assert select.tolist() == [True, False, True, False, True, False, True]
    assert not np.any(select & report) and np.all(select | report)
