import hashlib
import json

import numpy as np

from omniglot_inversion import cli, runs
from omniglot_inversion.leakage import EVALUATION, REPORT, load_test_set


def _hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(np.packbits(image > 0.5).tobytes()).hexdigest() for image in images}


def test_small2_shares_images_with_small1_and_the_disjoint_option_removes_them(data_dir):
    full, training_images = load_test_set(data_dir)
    assert len(full.images) == 3_120
    seen_names = {full.names[a] for a in np.unique(full.alphabets[full.seen])}
    assert seen_names == {"Greek", "Latin"}
    assert len(_hashes(full.images) & _hashes(training_images)) > 0
    disjoint, _ = load_test_set(data_dir, disjoint=True)
    assert not disjoint.seen.any() and len(disjoint.images) == 3_120 - int(full.seen.sum())
    assert not _hashes(disjoint.images) & _hashes(training_images)


def test_evaluate_command_on_a_tiny_part1_run(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    config = runs.Part1Config(epochs=1, attacker_epochs=1, train_size=64, val_size=32, attacker_size=32,
                              test_size=16, data_dir=data_dir)
    runs.run_part1(config, run, log=lambda _: None)
    out = tmp_path / "evaluation"
    assert cli.main(["evaluate", str(run), "--out", str(out), "--data-dir", data_dir, "--limit", "40"]) == 0
    assert "non-private: MSE" in capsys.readouterr().out
    result = json.loads((out / EVALUATION).read_text())
    assert result["num_images"] == 40 and result["chance"]["top1"] == 1 / 40
    (attack,) = result["attacks"]
    assert set(attack["baselines"]) == {"mean_training_image", "all_paper", "shuffled_codes"}
    for scores in (attack["attack"], *attack["baselines"].values()):
        assert scores["mse"]["low"] <= scores["mse"]["mean"] <= scores["mse"]["high"]
    assert set(attack["seen_unseen"]) <= {"seen", "unseen"} and attack["per_alphabet"]
    assert set(attack["gain_over_best_baseline"]) == {"mse", "psnr", "ssim", "top1", "top5", "same_character"}
    report = (out / REPORT).read_text()
    assert "| attacker |" in report and "baseline: all_paper" in report
    for figure in attack["figures"].values():
        assert (out / figure).stat().st_size > 5_000


def test_evaluate_refuses_a_folder_without_a_run(tmp_path, data_dir, capsys):
    assert cli.main(["evaluate", str(tmp_path), "--data-dir", data_dir]) == 2
    assert "holds no finished Part 1 or Part 2 run" in capsys.readouterr().err
