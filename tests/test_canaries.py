"""The one-run audit: its bound from guesses (Steinke, Nasr and Jagielski 2023), then end to end on a
target that memorises its canaries and on a DP target."""

import json

import numpy as np
import pytest
from scipy import stats

from omniglot_inversion import cli
from omniglot_inversion.measure import one_run_audit
from omniglot_inversion.pipelines import canary_audit


def test_without_delta_the_p_value_is_the_randomized_response_tail():
    q = np.exp(1.0) / (1 + np.exp(1.0))
    assert one_run_audit.p_value(1000, 100, 80, 1.0, 0.0) == pytest.approx(stats.binom.sf(79, 100, q), rel=1e-12)
    # delta can only raise the p-value, so lower the bound
    assert one_run_audit.p_value(1000, 100, 80, 1.0, 1e-5) > one_run_audit.p_value(1000, 100, 80, 1.0, 0.0)
    bound = one_run_audit.epsilon_lower_bound(1000, 100, 80, 1e-5)
    assert one_run_audit.p_value(1000, 100, 80, bound, 1e-5) < 0.05 <= one_run_audit.p_value(
        1000, 100, 80, bound + 1e-3, 1e-5)
    assert one_run_audit.epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0  # chance accuracy rejects nothing


def test_right_guesses_bound_epsilon_and_random_ones_do_not():
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    perfect = one_run_audit.audit(included + rng.normal(0, 0.1, 1000), included, 100, 100, 1e-5)
    assert perfect["correct"] == perfect["guesses"] == 200 and perfect["epsilon"] > 2.5
    # scores that know nothing: at 95 % confidence, a bound of 0 in about 19 of 20 audits
    bounds = [one_run_audit.audit(np.random.default_rng(seed).normal(size=1000), included, 100, 100, 1e-5)["epsilon"]
              for seed in range(20)]
    assert sum(bound > 0 for bound in bounds) <= 3
    with pytest.raises(ValueError, match="k_plus"):
        one_run_audit.audit(np.zeros(10), np.zeros(10, bool), 6, 6, 1e-5)


def test_a_target_that_memorises_its_canaries_gives_them_away(tmp_path, data_dir):
    config = canary_audit.CanaryConfig(canaries=64, guesses=32, noise_multiplier=None, epochs=40, train_size=64,
                                       val_size=32, data_dir=data_dir, seed=1)
    result = canary_audit.run_canaries(config, tmp_path / "run", log=lambda line: None)["audit"]
    assert result["records"] == 64 + result["included"] and result["accountant_epsilon"] is None
    # every guess right: with 32 guesses among 64 canaries the bound can reach about 2.3
    assert result["correct"] >= 30 and result["epsilon"] > 1.5


def test_the_dp_audit_sets_its_bound_next_to_the_accountants_epsilon_of_the_same_training(tmp_path, data_dir,
                                                                                            capsys):
    out = tmp_path / "run"
    assert cli.main(["canaries", "--quick", "--out", str(out), "--data-dir", data_dir, "--reproducible-noise"]) == 0
    audit = json.loads((out / "metrics.json").read_text())["audit"]
    account = audit["account"]
    # the accountant counts the records the training sampled from: its own and the included canaries
    assert account["n"] == audit["records"] == 256 + audit["included"] and account["sampling"] == "poisson"
    assert account["steps"] == 2 * 4 and audit["accountant_epsilon"] == account["epsilon"]
    assert audit["ratio"] == pytest.approx(audit["epsilon"] / audit["accountant_epsilon"])
    assert 0 <= audit["epsilon"] < audit["accountant_epsilon"]
    assert "empirical epsilon >= " in capsys.readouterr().out
    assert cli.main(["canaries", "--quick", "--out", str(out), "--data-dir", data_dir, "--non-private",
                     "--noise", "0.5"]) == 2
