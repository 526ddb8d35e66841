import json
import math
import re

import pytest

from omniglot_inversion import cli
from omniglot_inversion.dp import accounting
from omniglot_inversion.errors import UsageError


def test_epsilon_table_matches_tf_privacy_and_the_post():
    rows = accounting.epsilon_table([0.7, 0.5, 0.3])
    assert [round(row["epsilon"], 2) for row in rows] == [3.39, 11.35, 82.16]
    # the post printed 4.0 / 12.5 / 84.7 with TensorFlow Privacy of 2020
    assert [round(row["epsilon_2020"], 1) for row in rows] == [4.0, 12.5, 84.7]
    assert [round(row["epsilon_2020"], 2) for row in rows] == [4.02, 12.47, 84.66]
    assert all(row["steps"] == math.ceil(20 * 13180 / 32) == 8238 for row in rows)
    assert all(row["delta"] == 1e-5 for row in rows)


def test_more_noise_or_fewer_epochs_gives_smaller_epsilon():
    low, high = accounting.epsilon_table([1.0, 2.0], epochs=5)
    assert high["epsilon"] < low["epsilon"] and high["epsilon_2020"] < low["epsilon_2020"]
    assert accounting.epsilon_table([1.0], epochs=1)[0]["epsilon"] < low["epsilon"]
    # the classic conversion is never tighter than the current one
    assert low["epsilon_2020"] >= low["epsilon"]


def test_bad_parameters_are_refused_and_large_delta_warns():
    with pytest.raises(UsageError, match="noise multiplier must be positive"):
        accounting.epsilon_table([0.0])
    with pytest.raises(UsageError, match="batch_size <= n"):
        accounting.epsilon_table([1.0], n=10, batch_size=32)
    with pytest.raises(UsageError, match="delta must be in"):
        accounting.epsilon_table([1.0], delta=1.5)
    with pytest.warns(UserWarning, match="1/n"):
        accounting.epsilon_table([1.0], n=1000, delta=0.01)


def test_epsilon_command_prints_and_writes_json_and_csv(tmp_path, capsys):
    assert cli.main(["epsilon", "--noise", "0.7", "0.3", "--out", str(tmp_path), "--statement"]) == 0
    printed = capsys.readouterr().out
    assert "epsilon (2020 accounting, post)" in printed and "3.39" in printed and "84.66" in printed
    assert "Poisson sampling" in printed
    saved = json.loads((tmp_path / "epsilon.json").read_text())
    assert [row["noise_multiplier"] for row in saved["rows"]] == [0.7, 0.3]
    assert "Poisson" in saved["caveat"]
    lines = (tmp_path / "epsilon.csv").read_text().splitlines()
    assert lines[0].startswith("noise_multiplier,epsilon,epsilon_2020,delta,steps")
    assert len(lines) == 3 and lines[1].startswith("0.7,3.39")


def test_statement_gives_the_numbers_readme_quotes():
    text = accounting.statement(13_180, 32, 20, 0.7, 1e-5)
    once_per_epoch = float(re.search(r"once per epoch:\s+([\d.]+)", text).group(1))
    poisson = float(re.search(r"Poisson sampling \(\*\):\s+([\d.]+)", text).group(1))
    assert (round(once_per_epoch, 1), round(poisson, 1)) == (141.0, 45.6)


def test_the_posts_call_answers_with_both_accountings():
    import omniglot_inversion

    row = omniglot_inversion.compute_dp_sgd_privacy(13_180, 32, 0.7, 20, 1e-5)
    assert (round(row["epsilon"], 2), round(row["epsilon_2020"], 2), row["steps"]) == (3.39, 4.02, 8238)
    assert omniglot_inversion.epsilon_table([0.7])[0] == row
