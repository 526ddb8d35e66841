import json
import sys

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion import build_complete_model, cli
from omniglot_inversion.dp import accounting, engines
from omniglot_inversion.dp.engines import DPSettings, train_dp
from omniglot_inversion.dp.fast_engine import fast_dp_gradients
from omniglot_inversion.errors import UsageError
from omniglot_inversion.network import training
from omniglot_inversion.pipelines import attack_run, part2, run_folder


def _random_batches(batches: int, batch_size: int = 32) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(batches * batch_size, 105, 105, 1)).astype(np.float32)
    labels = rng.integers(0, 50, size=batches * batch_size)
    return tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(batch_size)


@pytest.mark.parametrize("engine", [pytest.param("optimizer", marks=pytest.mark.post), "fast"])
def test_a_few_dp_steps_run_and_change_the_weights(engine):
    tf.keras.utils.set_random_seed(0)
    model = build_complete_model()
    before = [weight.numpy().copy() for weight in model.trainable_weights]
    rows = train_dp(model, DPSettings(noise_multiplier=0.7, batch_size=8), _random_batches(2, 8),
                    epochs=1, steps_per_epoch=2, engine=engine)
    assert len(rows) == 1 and 0.0 <= rows[0]["train_accuracy"] <= 1.0
    changed = [not np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_weights, strict=True)]
    assert all(changed)


@pytest.mark.post
def test_seeded_optimizer_engine_follows_the_fast_engine_where_no_layer_mixes_examples():
    """Same seed, data and initial weights, and with ``seeded_noise`` the same noise: on a model
    without batch norm the two engines take the same DP-SGD steps, so after three steps the weights
    still agree (float32 rounding apart) and both moved by far more than they differ."""
    def trained(engine):
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([
            tf.keras.Input((105, 105, 1)),
            tf.keras.layers.Conv2D(4, 7, strides=5, activation="relu"),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(50, activation="softmax"),
        ])
        start = np.concatenate([w.numpy().ravel() for w in model.trainable_weights])
        train_dp(model, DPSettings(noise_multiplier=0.7, batch_size=8), _random_batches(3, 8), epochs=1,
                 steps_per_epoch=3, engine=engine, seed=4, reproducible_noise=True)
        return start, np.concatenate([w.numpy().ravel() for w in model.trainable_weights])

    start, fast = trained("fast")
    _, optimizer = trained("optimizer")
    assert np.linalg.norm(fast - start) > 100 * np.linalg.norm(fast - optimizer)
    np.testing.assert_allclose(optimizer, fast, atol=1e-5)


def test_fast_exact_engine_is_the_fast_engine_without_sampling():
    """Engine 'fast-exact' takes every batch-statistics derivative over the whole batch: one step
    of it is one step of `fast_dp_gradients` with both samples None, and differs from engine 'fast'."""
    settings = DPSettings(noise_multiplier=0.7, batch_size=8)

    def weights_after_one_step(engine=None, **samples):
        tf.keras.utils.set_random_seed(0)
        model = build_complete_model()
        if engine:
            train_dp(model, settings, _random_batches(1, 8), epochs=1, steps_per_epoch=1, engine=engine,
                     reproducible_noise=True)  # noise from seed 0, as the reference below
        else:
            optimizer = engines.adam(settings.learning_rate)
            training.fit(model, training.CLASSIFY, _random_batches(1, 8), epochs=1, steps_per_epoch=1,
                         optimizer=optimizer, gradients=fast_dp_gradients(model, training.CLASSIFY, settings,
                                                                          optimizer.iterations, 0, **samples))
        return np.concatenate([w.numpy().ravel() for w in model.trainable_weights])

    exact = weights_after_one_step("fast-exact")
    np.testing.assert_array_equal(exact, weights_after_one_step(statistics_sample=None, paths_sample=None))
    assert not np.array_equal(exact, weights_after_one_step("fast"))
    assert "whole batch" in engines.guarantee("fast-exact", "batch")


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(noise_multiplier=-0.1), "noise multiplier must be >= 0"),
    (dict(noise_multiplier=0.7, l2_norm_clip=0.0), "clip must be > 0"),
    (dict(noise_multiplier=0.7, batch_size=32, num_microbatches=5), "not divisible by the number of microbatches"),
    (dict(noise_multiplier=0.7, learning_rate=0.0), "learning rate must be > 0"),
])
def test_bad_dp_settings_are_refused(kwargs, message):
    with pytest.raises(UsageError, match=message):
        DPSettings(**kwargs)


def test_part2_quick_command_writes_every_output(tmp_path, data_dir, part2_quick_run):
    out, printed = part2_quick_run.out, part2_quick_run.printed
    assert "DP noise 0.5 epoch 2/2" in printed and "epsilon (2020 accounting, post)" in printed
    metrics = json.loads((out / run_folder.METRICS).read_text())
    assert set(metrics["noise_levels"]) == {"0.7", "0.5"}
    # the post's table stays, labelled as its accounting (n = 13,180, its step count)
    assert [row["noise_multiplier"] for row in metrics["epsilon_post"]] == [0.7, 0.5]
    assert "The post's accounting: n = 13180" in metrics["epsilon_post_caveat"]
    assert "batch statistics" in metrics["guarantees"] and metrics["sampling"] == "poisson"
    for noise in ("0.7", "0.5"):
        level = metrics["noise_levels"][noise]
        assert level["target"]["steps"] == 2 * 6 and level["target"]["seconds_per_step"] > 0
        # the guarantee is accounted on the records the training sampled from and the steps it took,
        # here computed anew with dp-accounting from what the run recorded
        account = level["account"]
        assert account["n"] == level["target"]["records"] == metrics["config"]["train_size"] == 256
        assert account["steps"] == level["target"]["steps"] and account["sampling"] == "poisson"
        event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            32 / account["n"], dp_accounting.GaussianDpEvent(float(noise))), account["steps"])
        expected = dp_accounting.rdp.RdpAccountant(accounting.ORDERS).compose(event).get_epsilon(1e-5)
        assert level["epsilon"] == account["epsilon"] == pytest.approx(expected, rel=1e-12)
        post_row = next(row for row in metrics["epsilon_post"] if row["noise_multiplier"] == float(noise))
        assert (level["epsilon_post"], level["epsilon_post_2020"]) == (post_row["epsilon"], post_row["epsilon_2020"])
        assert level["epsilon_post"] < level["epsilon_post_2020"]
        assert 0.0 < level["test"]["test_mse"] < 1.0
        folder = out / f"noise_{noise}"
        for name in (part2.DP_WEIGHTS, run_folder.MOBILE_STAGE, run_folder.ATTACKER_WEIGHTS, run_folder.FIGURE):
            assert (folder / name).stat().st_size > 1000
    assert (out / "epsilon.csv").exists() and (out / "epsilon.json").exists()
    # evaluate finds each noise level's target, titles it with its epsilon, and draws the
    # privacy-utility figure; --disjoint keeps only alphabets small1 lacks
    evaluation_out = tmp_path / "evaluation"
    assert cli.main(["evaluate", str(out), "--out", str(evaluation_out), "--data-dir", data_dir, "--limit", "60",
                     "--attacks", "decoder", "--disjoint"]) == 0
    evaluated = json.loads((evaluation_out / "evaluation.json").read_text())
    assert [row["target"] for row in evaluated["rows"]] == ["noise 0.7", "noise 0.5"]
    for row in evaluated["rows"]:
        level = metrics["noise_levels"][row["target"].removeprefix("noise ")]
        assert row["epsilon"] == level["epsilon"] and row["target_val_accuracy"] == level["target"]["val_accuracy"]
        assert set(row["metrics"]["seen_unseen"]) == {"unseen"}
        assert row["pretrained_decoder"].endswith(run_folder.ATTACKER_WEIGHTS)
    assert evaluated["test_set"] == "small2 without small1's alphabets" and evaluated["num_images"] < 60
    assert (evaluation_out / evaluated["privacy_utility_figures"]["decoder"]).stat().st_size > 5_000
    report = (evaluation_out / "report.md").read_text()
    assert f"| noise 0.7 | {metrics['noise_levels']['0.7']['epsilon']:.2f} |" in report
    # the membership audit finds each level's complete DP model and sets it next to its epsilon
    audit_out = tmp_path / "audit"
    assert cli.main(["membership", str(out), "--out", str(audit_out), "--data-dir", data_dir, "--limit", "40"]) == 0
    audited = json.loads((audit_out / "membership.json").read_text())
    assert [row["target"] for row in audited["rows"]] == ["noise 0.7", "noise 0.5"]
    for row in audited["rows"]:
        assert row["accountant_epsilon"] == metrics["noise_levels"][row["target"].removeprefix("noise ")]["epsilon"]
        assert row["members"] == row["non_members"] == 40 and row["empirical_epsilon"]["delta"] == 1e-5
    # the intercepted file of a DP run feeds the standalone attack command
    attack_out = tmp_path / "attack"
    code = cli.main(["attack", "--quick", "--intercepted", str(out / "noise_0.7" / run_folder.MOBILE_STAGE),
                     "--out", str(attack_out), "--data-dir", data_dir, "--attacker-epochs", "1", "--limit", "8"])
    assert code == 0
    record = json.loads((attack_out / attack_run.RESULT).read_text())
    assert record["options"]["epochs"] == 1 and record["num_images"] == 8
    assert (attack_out / attack_run.FIGURE).exists()


def test_unknown_engine_is_refused():
    with pytest.raises(UsageError, match="Unknown DP engine 'jacobian'"):
        train_dp(build_complete_model(), DPSettings(noise_multiplier=1.0), _random_batches(1),
                 epochs=1, steps_per_epoch=1, engine="jacobian")


def test_part2_refuses_negative_noise_before_writing(tmp_path, capsys):
    assert cli.main(["part2", "--quick", "--out", str(tmp_path / "run"), "--noise", "-1"]) == 2
    assert "noise multiplier must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # noise 0 passes the settings check but has no finite epsilon: refused before writing too
    assert cli.main(["part2", "--quick", "--out", str(tmp_path / "run"), "--noise", "0"]) == 2
    assert "must be positive for a finite epsilon" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.post
def test_optimizer_engine_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    """model.fit with DPKerasAdamOptimizer, stopped by an error after its second epoch, continues at
    that epoch from the per-epoch backup and reports every epoch once. With seeded noise (keyed on
    the restored step count) and one batch repeated (so that the restarted data iterator gives the
    same batches), it ends on the uninterrupted run's weights."""
    settings = DPSettings(noise_multiplier=0.7, batch_size=8)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(8, 105, 105, 1)).astype(np.float32)
    batches = tf.data.Dataset.from_tensors((images, rng.integers(0, 50, size=8))).repeat()
    original = engines._EpochLog.on_epoch_end

    def crash_after_second_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise RuntimeError("simulated crash")

    def run(checkpoint_dir):
        tf.keras.utils.set_random_seed(0)
        model = build_complete_model()
        rows = train_dp(model, settings, batches, epochs=3, steps_per_epoch=1, engine="optimizer",
                        checkpoint_dir=checkpoint_dir, seed=3, reproducible_noise=True)
        return rows, np.concatenate([w.numpy().ravel() for w in model.weights])

    uninterrupted_rows, uninterrupted = run(None)
    monkeypatch.setattr(engines._EpochLog, "on_epoch_end", crash_after_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path)
    first_rows = json.loads((tmp_path / "epochs.json").read_text())
    monkeypatch.setattr(engines._EpochLog, "on_epoch_end", original)
    rows, resumed = run(tmp_path)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[0] == first_rows[0]  # epoch 1 was not trained again
    assert np.linalg.norm(resumed - uninterrupted) < 1e-3 * np.linalg.norm(uninterrupted)
    assert rows[-1]["train_loss"] == pytest.approx(uninterrupted_rows[-1]["train_loss"], rel=1e-4)


def _dp_weights(seed: int, reproducible: bool, checkpoint_dir=None) -> np.ndarray:
    training.set_seed(seed, deterministic=True)
    model = build_complete_model()
    settings = DPSettings(noise_multiplier=1.0, batch_size=8)
    train_dp(model, settings, _random_batches(2, batch_size=8), epochs=1, steps_per_epoch=2, seed=seed,
             reproducible_noise=reproducible, checkpoint_dir=checkpoint_dir)
    return np.concatenate([w.numpy().ravel() for w in model.trainable_weights])


def test_default_noise_is_secret_and_reproducible_noise_repeats(tmp_path, monkeypatch):
    # reproducible noise repeats exactly for one seed
    np.testing.assert_array_equal(_dp_weights(2, reproducible=True), _dp_weights(2, reproducible=True))
    # secret noise: a run of the same seed with another key (a known one, planted to look for it
    # in what the training writes, here its checkpoints) ends elsewhere
    secret = _dp_weights(2, reproducible=False)
    key = 0x5EC2E7_0DD_BA11
    monkeypatch.setattr(engines.secrets, "randbits", lambda bits: key)
    folder = tmp_path / "checkpoints"
    assert not np.array_equal(secret, _dp_weights(2, reproducible=False, checkpoint_dir=folder))
    patterns = [str(key).encode(), key.to_bytes(8, "little"), key.to_bytes(8, "big"), hex(key).encode()]
    written = [path for path in folder.rglob("*") if path.is_file()]
    assert written and not [p for p in written if any(pattern in p.read_bytes() for pattern in patterns)]
    assert "never written" in engines.guarantee("fast", "batch") and "optimizer" in engines.ENGINES
    assert "no differential privacy" in engines.guarantee("optimizer", "batch", reproducible_noise=True)


def test_optimizer_engine_without_tensorflow_privacy_names_the_extra(tmp_path, monkeypatch, capsys):
    """Where TensorFlow Privacy does not import (absent, or a Keras 3 stack) engine 'optimizer' is
    refused before anything is written, naming the [post] extra and the engine that needs none."""
    monkeypatch.setitem(sys.modules, "tensorflow_privacy", None)  # import fails as if not installed
    with pytest.raises(UsageError, match=r"\[post\] extra.*--engine fast"):
        engines.require_optimizer_engine()
    out = tmp_path / "run"
    assert cli.main(["part2", "--quick", "--engine", "optimizer", "--out", str(out)]) == 2
    assert "[post] extra" in capsys.readouterr().err and not out.exists()
