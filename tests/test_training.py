import io
import signal
import sys

import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion import AttackModel, TargetModel, interrupts
from omniglot_inversion.dp import engines
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.network import training


def test_short_target_run_lowers_the_loss(data_dir):
    training.set_seed(1)
    train, val, steps = data.target_datasets(data_dir, train_size=320, val_size=64, seed=1)
    history = training.fit(TargetModel(), training.CLASSIFY, train, val_ds=val, epochs=3, steps_per_epoch=steps)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"train_accuracy", "val_accuracy", "val_loss", "seconds"} <= set(history[0])


def test_short_attacker_run_lowers_the_mse(data_dir):
    training.set_seed(2)
    images, _ = data.as_arrays(data.load_split("small1", data_dir, limit=96))
    target = TargetModel()
    history = training.train_attacker(AttackModel(), target.mobile_step, images, epochs=10)
    assert history[-1]["train_mse"] < 0.8 * history[0]["train_mse"]


def test_codes_are_queried_once_and_match_the_mobile_step():
    target = TargetModel()
    images = np.random.default_rng(0).uniform(size=(300, 105, 105, 1)).astype(np.float32)
    codes = training.query_codes(target.mobile_step, images)
    assert codes.shape == (300, 1, 1, 32)
    np.testing.assert_allclose(codes[:5], target.mobile_step(images[:5]).numpy(), rtol=1e-5, atol=1e-6)


def test_reconstructions_are_clipped_to_unit_range():
    target, attacker = TargetModel(), AttackModel()
    attacker.conv4.bias.assign([5.0])  # force outputs above 1
    guesses = training.reconstruct(attacker, target.mobile_step, np.zeros((4, 105, 105, 1), np.float32))
    assert guesses.shape == (4, 105, 105, 1)
    assert guesses.max() == 1.0 and guesses.min() >= 0.0


def test_api_refuses_8_bit_images_before_querying():
    target = TargetModel()
    with pytest.raises(UsageError, match="for 8-bit pixels use images.astype"):
        training.query_codes(target.mobile_step, np.zeros((4, 105, 105, 1), np.uint8))
    with pytest.raises(UsageError, match="without the channel axis"):
        training.reconstruct(AttackModel(), target.mobile_step, np.zeros((4, 105, 105), np.float32))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_a_progress_bar_follows_the_steps_on_a_terminal_only(monkeypatch, terminal):
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2, activation="softmax")])
    pairs = tf.data.Dataset.from_tensor_slices((np.ones((20, 3), np.float32), np.zeros(20, int))).batch(4)
    output = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stdout", output)
    rows = []
    training.fit(model, training.CLASSIFY, pairs, epochs=2, on_epoch=rows.append)
    assert len(rows) == 2
    shown = output.getvalue()
    if terminal:
        assert shown.count("5/5") == 2  # each epoch's bar reaches its 5th of 5 steps
    else:
        assert shown == ""  # a log file gets only what on_epoch prints


@pytest.mark.parametrize("terminal", [True, False])
def test_a_log_file_shows_the_first_every_tenth_and_the_last_epoch_of_a_long_training(monkeypatch, terminal):
    monkeypatch.setattr(sys, "stdout", _Terminal() if terminal else io.StringIO())
    for total, in_a_file in ((25, [1, 10, 20, 25]), (30, [1, 10, 20, 30]), (training.LOGGED_EVERY, None)):
        rows = [{"epoch": epoch} for epoch in range(1, total + 1)]
        shown = []
        report = training.logged_epochs(shown.append, total)
        for row in rows:
            report(row)
        shown = [row["epoch"] for row in shown]
        # a terminal, or a training of at most LOGGED_EVERY epochs, shows every epoch
        assert shown == (list(range(1, total + 1)) if terminal or in_a_file is None else in_a_file)


class _SwallowingFinaliser:
    """Ctrl-C handled inside a finaliser, as happens when the signal lands while the garbage
    collector runs a TensorFlow object's ``__del__``: Python prints the KeyboardInterrupt and goes on."""

    def __del__(self):
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)


def _fit_of_the_package(on_epoch, epochs):
    """`training.fit`, the loop of every training but the optimizer engine's."""
    images = np.random.default_rng(0).uniform(size=(8, 4)).astype(np.float32)
    batches = tf.data.Dataset.from_tensor_slices((images, images)).batch(4)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(4)])
    training.fit(model, training.RECONSTRUCT, batches, epochs=epochs, on_epoch=on_epoch)


def _fit_of_keras(on_epoch, epochs):
    """``model.fit`` with the optimizer engine's epoch log (`engines._EpochLog`)."""
    rng = np.random.default_rng(0)
    batches = tf.data.Dataset.from_tensor_slices((rng.uniform(size=(8, 4)).astype(np.float32),
                                                  rng.integers(0, 3, size=8))).batch(4)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"])
    model.fit(batches, epochs=epochs, verbose=0, callbacks=[engines._EpochLog(on_epoch)])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("fit", [_fit_of_the_package, _fit_of_keras])
def test_ctrl_c_swallowed_by_a_finaliser_still_stops_the_training_at_its_next_step(fit):
    epochs_done, before = [], signal.getsignal(signal.SIGINT)  # SIG_IGN where started in the background

    def on_epoch(row):
        epochs_done.append(row["epoch"])
        _SwallowingFinaliser()  # made and dropped at once: its __del__ runs here

    with interrupts.handled(), pytest.raises(KeyboardInterrupt):
        fit(on_epoch, epochs=3)
    assert epochs_done == [1]  # the interrupt came after epoch 1; epoch 2 stopped at its first step
    # outside the CLI's block the handler before it is back and nothing is left recorded
    assert signal.getsignal(signal.SIGINT) is before
    fit(None, epochs=1)
