"""The split-MLP scenario offline at small sizes: the lecture's network, trained, its saved stage
attacked by every method, the table written, a rerun resumed."""

import numpy as np
import pytest

from omniglot_inversion.errors import UsageError
from omniglot_inversion.network.user_stage import load_stage
from omniglot_inversion.pipelines import split_mlp


def test_the_network_is_the_lectures():
    mobile, model = split_mlp.build_split_mlp()
    assert mobile.input_shape == (None, 784) and mobile.output_shape == (None, 500)
    assert mobile.count_params() == 784 * 500 + 500
    assert model(np.zeros((2, 784), np.float32)).shape == (2, 10)
    assert model.count_params() - mobile.count_params() == (500 * 500 + 500) + (500 * 10 + 10)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("split_mlp")
    config = split_mlp.SplitMLPConfig.quick(data_dir=data_dir)
    lines = []
    return out, config, split_mlp.run_split_mlp(config, out, log=lines.append), lines


def test_offline_run_trains_the_target_and_attacks_its_stage_with_every_method(quick_run):
    out, config, summary, _ = quick_run
    assert summary["val_accuracy"] > 0.8  # 2 epochs are enough for the bundled digits
    assert summary["num_test"] == config.test_images and summary["num_surrogate"] == config.surrogate_images
    stage = load_stage(out / "target" / split_mlp.STAGE)
    assert stage.input_shape == (None, 784) and stage.output_shape == (None, 500)
    assert set(summary["attacks"]) == set(split_mlp.METHODS)
    with np.load(out / "attacks" / "whitebox" / "reconstructions.npz") as saved:
        assert saved["reconstructions"].shape == (config.test_images, 784)
        assert saved["codes"].shape == (config.test_images, 500)
    # one dense ReLU layer of 500 units keeps most of a 784-pixel digit: the white-box search
    # finds images nearer the originals than the mean of the attacker's own images
    mean_image = summary["baselines"]["mean_training_image"]["mse"]
    assert summary["attacks"]["whitebox"]["mse"]["high"] < mean_image["low"]
    report = (out / split_mlp.REPORT).read_text()
    for name in (*split_mlp.METHODS, "baseline: mean_training_image", "baseline: shuffled_codes"):
        assert f"| {name} |" in report


def test_rerun_keeps_the_trained_target_and_finished_attacks(quick_run):
    out, config, summary, _ = quick_run
    lines = []
    again = split_mlp.run_split_mlp(config, out, log=lines.append)
    assert not any(line.startswith("target epoch") for line in lines)
    assert sum("done before" in line for line in lines) == len(split_mlp.METHODS)
    assert again["attacks"]["whitebox"]["mse"] == summary["attacks"]["whitebox"]["mse"]


def test_a_folder_of_another_run_is_refused(quick_run):
    out, config, _, _ = quick_run
    other = split_mlp.SplitMLPConfig.quick(data_dir=config.data_dir, epochs=3)
    with pytest.raises(UsageError, match="other settings"):
        split_mlp.run_split_mlp(other, out)


def test_bad_settings_are_refused():
    with pytest.raises(UsageError, match="digits or mnist"):
        split_mlp.SplitMLPConfig(source="cifar")
    with pytest.raises(UsageError, match="at least 1"):
        split_mlp.SplitMLPConfig(epochs=0)
