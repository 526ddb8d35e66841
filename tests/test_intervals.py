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


def test_the_hierarchical_interval_holds_the_spread_between_seeds():
    # three seeds of 1,000 images each; their rates 0.02, 0.05, 0.08 differ far beyond one seed's
    # binomial error, so the interval must be wider than the pooled exact interval
    wide = intervals.hierarchical_rate([20, 50, 80], [1000] * 3)
    pooled = intervals.clopper_pearson(150, 3000)
    assert wide["mean"] == pytest.approx(0.05) and wide["per_seed"] == pytest.approx([0.02, 0.05, 0.08])
    assert wide["high"] - wide["low"] > 2 * (pooled[1] - pooled[0])
    assert wide["between_seed_std"] == pytest.approx(0.03)
    # seeds that agree give about the pooled interval, never less
    narrow = intervals.hierarchical_rate([50, 50, 50], [1000] * 3)
    assert narrow["low"] <= pooled[0] and narrow["high"] >= pooled[1]
    assert narrow["high"] - narrow["low"] < 0.6 * (wide["high"] - wide["low"])
    # no hit anywhere still has an upper end: the pooled exact one
    zero = intervals.hierarchical_rate([0, 0], [104, 104])
    assert zero["low"] == 0.0 and zero["high"] == pytest.approx(intervals.clopper_pearson(0, 208)[1])
    with pytest.raises(ValueError):
        intervals.hierarchical_rate([5], [4])


def _evaluation(seed: int, top1: float) -> dict:
    group = {rate: {"mean": value} for rate, value in (("top1", top1), ("top5", 2 * top1), ("same_character", 0.01))}
    metrics = {"num_images": 3000, "num_unseen": 2000, "seen_unseen": {"unseen": group, "seen": group}}
    return {"settings": {"seed": seed}, "test_set": "small2", "num_images": 3000,
            "chance": {"top1": 1 / 3000, "top5": 5 / 3000, "same_character": 0.0064},
            "rows": [{"target": "non-private", "label": "hybrid", "metrics": metrics}]}


def test_replicates_pair_the_rows_across_seeds_and_refuse_a_seed_given_twice(tmp_path, capsys):
    import json

    from omniglot_inversion import cli
    from omniglot_inversion.pipelines import replicates

    folders = []
    for seed, top1 in ((0, 0.004), (1, 0.010), (2, 0.007)):
        folder = tmp_path / f"seed{seed}" / "attack_suite"
        folder.mkdir(parents=True)
        (folder / "evaluation.json").write_text(json.dumps(_evaluation(seed, top1)))
        folders.append(str(folder.parent))
    assert cli.main(["replicates", *folders, "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / replicates.RESULT).read_text())
    unseen = next(row for row in result["rows"] if row["group"] == "unseen")
    # 8, 20 and 14 hits of the 2,000 unseen images; 1,000 seen images per seed
    assert unseen["images"] == 2000 and unseen["top1"]["per_seed"] == pytest.approx([0.004, 0.010, 0.007])
    assert unseen["top1"]["mean"] == pytest.approx(0.007) and unseen["top1"]["low"] < 0.005 < 0.009 < unseen["top1"][
        "high"]
    assert next(row for row in result["rows"] if row["group"] == "seen")["images"] == 1000
    text = (tmp_path / "out" / replicates.REPORT).read_text()
    assert "| non-private | hybrid | unseen | 2000 | 0.007 [" in text and "(0.004 / 0.010 / 0.007)" in text
    (tmp_path / "seed2" / "attack_suite" / "evaluation.json").write_text(json.dumps(_evaluation(1, 0.007)))
    capsys.readouterr()
    assert cli.main(["replicates", *folders, "--out", str(tmp_path / "again")]) == 2
    assert "a seed given twice" in capsys.readouterr().err and not (tmp_path / "again").exists()
    assert cli.main(["replicates", folders[0], "--out", str(tmp_path / "again")]) == 2
    # rows that record their stage's digest: one training evaluated under two seeds is refused,
    # two trainings evaluated under one seed are replicates
    for seed, digest in ((0, "a"), (1, "b"), (2, "a")):
        evaluation = _evaluation(seed, 0.005)
        evaluation["rows"][0]["stage_sha256"] = digest
        (tmp_path / f"seed{seed}" / "attack_suite" / "evaluation.json").write_text(json.dumps(evaluation))
    capsys.readouterr()
    assert cli.main(["replicates", *folders, "--out", str(tmp_path / "again")]) == 2
    error = capsys.readouterr().err
    assert "the same training of 'non-private'" in error and "seed0" in error and "seed1" not in error
    evaluation = _evaluation(0, 0.005)
    evaluation["rows"][0]["stage_sha256"] = "c"
    (tmp_path / "seed2" / "attack_suite" / "evaluation.json").write_text(json.dumps(evaluation))
    assert cli.main(["replicates", *folders, "--out", str(tmp_path / "again")]) == 0


def test_a_group_of_one_image_gets_no_halves_and_the_other_group_keeps_them():
    from omniglot_inversion.measure import assessment

    per_image = {name: np.r_[np.ones(5), np.zeros(5)] for name in assessment.HALF_METRICS}
    seen = np.zeros(10, bool)
    seen[4] = True  # one seen image: it falls in one half only
    halves = assessment._halves(per_image, seen, seed=0)
    assert set(halves) == {"unseen"}
    # unseen: positions 0-3 and 5-9; the even ones (0, 2, 6, 8) select, the odd ones (1, 3, 5, 7, 9) report
    assert halves["unseen"]["select"]["top1"]["mean"] == pytest.approx(2 / 4)
    assert halves["unseen"]["report"]["top1"]["mean"] == pytest.approx(2 / 5)
