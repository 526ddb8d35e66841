import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from omniglot_inversion import attacks, cli, runs
from omniglot_inversion.leakage import EVALUATION, REPORT, find_targets, load_test_set

SAVED = Path(__file__).resolve().parents[1] / "saved_models"


def _hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(np.packbits(image > 0.5).tobytes()).hexdigest() for image in images}


def test_small2_shares_images_with_small1_and_the_disjoint_option_removes_them(data_dir):
    full = load_test_set(data_dir)
    small1 = attacks.load_surrogate("small1", data_dir)
    assert len(full.images) == 3_120
    seen = np.isin(full.alphabets, small1.alphabets)
    assert {full.names[a] for a in np.unique(full.alphabets[seen])} == {"Greek", "Latin"}
    assert len(_hashes(full.images) & _hashes(small1.images)) > 0
    disjoint = full.subset(~seen)
    assert len(disjoint.images) == 3_120 - int(seen.sum())
    assert not _hashes(disjoint.images) & _hashes(small1.images)


def test_shipped_models_folder_yields_its_four_targets():
    targets = find_targets(SAVED)
    assert [t.label for t in targets] == ["non-private", "noise 0.7", "noise 0.5", "noise 0.3"]
    assert targets[0].epsilon is None and 3.3 < targets[1].epsilon < 3.5
    assert all(t.attacker_path.exists() for t in targets)


def test_evaluate_every_attack_against_a_part1_run_and_resume(tmp_path, part1_quick_run, data_dir, capsys):
    run = part1_quick_run.out
    out = tmp_path / "evaluation"
    argv = ["evaluate", str(run), "--out", str(out), "--data-dir", data_dir, "--limit", "40", "--quick",
            "--attacks", "decoder", "whitebox", "hybrid:background", "--iterations", "2", "--attacker-epochs", "1"]
    assert cli.main(argv) == 0
    assert "non-private / hybrid:background" in capsys.readouterr().out
    result = json.loads((out / EVALUATION).read_text())
    assert result["num_images"] == 40 and result["chance"]["top1"] == 1 / 40
    assert [row["label"] for row in result["rows"]] == ["decoder", "whitebox", "hybrid:background"]
    decoder, whitebox, hybrid = result["rows"]
    # the run's own attacker is the post's decoder; the background set's decoder is trained here
    assert decoder["pretrained_decoder"].endswith(runs.ATTACKER_WEIGHTS)
    assert hybrid["pretrained_decoder"] is None and hybrid["options"]["decoder"]["epochs"] == 1
    for row in result["rows"]:
        metrics = row["metrics"]
        assert set(metrics["baselines"]) == {"mean_training_image", "all_paper", "shuffled_codes"}
        for scores in (metrics["attack"], *metrics["baselines"].values()):
            assert scores["mse"]["low"] <= scores["mse"]["mean"] <= scores["mse"]["high"]
        assert metrics["verdict_unseen"]["text"] and "unseen" in metrics["seen_unseen"]
    # the background surrogate holds none of small2's alphabets: every test image is unseen for it
    assert set(hybrid["metrics"]["seen_unseen"]) == {"unseen"} and "seen" in decoder["metrics"]["seen_unseen"]
    report = (out / REPORT).read_text()
    for heading in ("## Verdicts (unseen alphabets)", "## Unseen alphabets", "## Seen alphabets", "best baseline"):
        assert heading in report
    for figure in decoder["figures"].values():
        assert (out / figure).stat().st_size > 5_000
    # a second evaluation reuses every finished pair: remove one to see only it redone
    shutil.rmtree(out / whitebox["folder"])
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before, kept") == 2 and "whitebox: 40/40 images inverted" in printed


def test_evaluate_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path), "--data-dir", str(tmp_path / "no-data")]) == 2
    assert "holds no finished Part 1 or Part 2 run" in capsys.readouterr().err


def test_evaluate_refuses_an_unknown_attack_before_running(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path), "--attacks", "decoder:small9"]) == 2
    assert "Unknown surrogate set 'small9'" in capsys.readouterr().err
