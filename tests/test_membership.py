"""The membership-inference audit: the epsilon bound and intervals against hand computations, the
attack on a model that memorised its members and on one that saw neither set, and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion import cli
from omniglot_inversion.measure import intervals, membership
from omniglot_inversion.pipelines.membership_audit import FIGURE, RESULT


def test_epsilon_lower_bound_of_a_known_pair():
    # TPR 0.5 at FPR 0.01: log((0.5 - delta) / 0.01) beats log((1 - 0.01 - delta) / 0.5)
    assert membership.epsilon_lower_bound(0.5, 0.01, 1e-5) == pytest.approx(math.log(0.49999 / 0.01), rel=1e-12)
    assert membership.epsilon_lower_bound(0.99, 0.5, 0.0) == pytest.approx(math.log(0.5 / 0.01), rel=1e-12)
    assert membership.epsilon_lower_bound(0.3, 0.3, 1e-5) == 0.0  # a guess proves nothing
    assert membership.epsilon_lower_bound(0.2, 0.0, 1e-5) == math.inf


def test_clopper_pearson_matches_its_closed_forms():
    # no success in n trials: upper end 1 - (alpha / 2) ** (1 / n); all successes: lower end (alpha / 2) ** (1 / n)
    assert intervals.clopper_pearson(0, 100) == (0.0, pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-9))
    assert intervals.clopper_pearson(100, 100) == (pytest.approx(0.025 ** (1 / 100), rel=1e-9), 1.0)
    low, high = intervals.clopper_pearson(50, 100)
    assert low < 0.5 < high and high - low == pytest.approx(0.2, abs=0.01)


def test_empirical_epsilon_uses_the_conservative_ends_of_both_intervals():
    members, non_members = np.zeros(1000), np.zeros(1000)
    members[:500] = 2.0  # a threshold at 1 catches half the members and no non-member
    result = membership.empirical_epsilon(members, non_members, delta=1e-5)
    tpr_low = intervals.clopper_pearson(500, 1000)[0]
    fpr_high = intervals.clopper_pearson(0, 1000)[1]
    assert (result["tpr"], result["fpr"]) == (0.5, 0.0)
    assert result["epsilon"] == pytest.approx(math.log((tpr_low - 1e-5) / fpr_high), rel=1e-9)


def _records(count: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, 32)).astype(np.float32), rng.integers(0, 10, size=count)


def _per_record_loss(model, inputs, labels) -> np.ndarray:
    return tf.keras.losses.sparse_categorical_crossentropy(labels, model(inputs, training=False)).numpy()


def test_the_audit_finds_a_memorising_model_and_not_one_that_saw_neither_set():
    tf.keras.utils.set_random_seed(0)
    members, non_members, unrelated = _records(200, 1), _records(200, 2), _records(200, 3)
    model = tf.keras.Sequential([tf.keras.Input((32,)), tf.keras.layers.Dense(256, activation="relu"),
                                 tf.keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(*members, epochs=60, batch_size=50, verbose=0)  # random labels: only memorising fits them
    memorised = membership.audit(_per_record_loss(model, *members), _per_record_loss(model, *non_members),
                                 delta=1e-5, samples=200)
    assert memorised["auc"]["mean"] > 0.9 and memorised["auc"]["low"] > 0.85
    assert memorised["advantage"]["mean"] > 0.6 and memorised["empirical_epsilon"]["epsilon"] > 1.0
    # the same model on two sets it never saw: no signal (AUC within 0.1 of 0.5, interval around 0.5)
    blind = membership.audit(_per_record_loss(model, *non_members), _per_record_loss(model, *unrelated),
                             delta=1e-5, samples=200)
    assert abs(blind["auc"]["mean"] - 0.5) < 0.1 and blind["auc"]["low"] < 0.5 < blind["auc"]["high"]
    assert len(blind["roc"]["fpr"]) == len(blind["roc"]["tpr"]) > 10


def test_membership_command_on_a_part1_run(part1_quick_run, tmp_path, data_dir, capsys):
    out = tmp_path / "audit"
    assert cli.main(["membership", str(part1_quick_run.out), "--out", str(out), "--data-dir", data_dir]) == 0
    assert "non-private, loss threshold: AUC" in capsys.readouterr().out
    result = json.loads((out / RESULT).read_text())
    (row,) = result["rows"]
    assert row["target"] == "non-private" and row["accountant_epsilon"] is None
    assert row["members"] == row["non_members"] == 256  # the quick run validates on 256 records
    for name in ("auc", "advantage", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01"):
        assert row[name]["low"] <= row[name]["mean"] <= row[name]["high"]
    assert (out / FIGURE).stat().st_size > 5_000
    # run again: the same weights, seed and limit keep the row; another limit audits anew
    argv = ["membership", str(part1_quick_run.out), "--out", str(out), "--data-dir", data_dir]
    assert cli.main(argv) == 0
    assert "non-private: done before, kept" in capsys.readouterr().out
    assert json.loads((out / RESULT).read_text())["rows"] == [row]
    assert cli.main([*argv, "--limit", "100"]) == 0
    assert "done before" not in capsys.readouterr().out
    (again,) = json.loads((out / RESULT).read_text())["rows"]
    assert again["members"] == again["non_members"] == 100 and again["weights_sha256"] == row["weights_sha256"]


def test_membership_refuses_a_folder_without_a_trained_target(tmp_path, capsys):
    assert cli.main(["membership", str(tmp_path), "--out", str(tmp_path / "audit")]) == 2
    assert "holds no trained complete target" in capsys.readouterr().err
