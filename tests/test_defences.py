"""The defences at the cut: noise scale, dropout share, distance correlation, the defence carried by
the intercepted file, bad options, and the frontier sweep at small sizes."""

import json
import shutil

import dcor
import h5py
import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion import attacks, cli, defences, load_intercepted
from omniglot_inversion.errors import UsageError
from omniglot_inversion.network.interception import DEFENCE_ATTRIBUTE, save_mobile_stage
from omniglot_inversion.network.models import TargetModel
from omniglot_inversion.pipelines import frontier, reproduce, run_folder, shipping

DRAWS = (4000, 1, 1, 32)  # 128,000 code entries


@pytest.mark.parametrize("name", ["gaussian", "laplace", "nopeek+laplace"])
def test_noise_has_the_configured_scale_relative_to_the_code(name):
    tf.random.set_seed(0)
    parameters = {"noise_scale": 0.5} if name == "nopeek+laplace" else {}
    defence = defences.build(name, 0.5 if name != "nopeek+laplace" else 1.0, **parameters)
    calibrated = defence.calibrated(np.random.default_rng(0).normal(0.0, 2.0, size=DRAWS))
    assert calibrated.code_std == pytest.approx(2.0, rel=0.01)
    noise = calibrated.perturb(tf.fill(DRAWS, 3.0)).numpy() - 3.0
    assert np.std(noise) == pytest.approx(0.5 * 2.0, rel=0.05)  # strength (or noise_scale) x the code's sd
    assert abs(np.mean(noise)) < 0.02
    excess_kurtosis = np.mean(noise ** 4) / np.var(noise) ** 2 - 3.0
    assert excess_kurtosis == pytest.approx(0.0 if name == "gaussian" else 3.0, abs=0.3)  # normal 0, Laplace 3


@pytest.mark.parametrize("name", ["gaussian", "laplace", "nopeek+laplace"])
def test_growing_the_code_gains_nothing_against_training_noise(name):
    """While training, the noisy code is homogeneous of degree 1 in the clean code, also in the
    gradient: along the direction that scales the code, its derivative is the noisy code itself
    (Euler), so the network cannot outgrow the noise. With the noise scale held constant in the
    gradient the derivative is the clean code, and the post's target diverged (module noise)."""
    defence = defences.build(name, 1.0)
    codes = tf.constant(np.random.default_rng(2).normal(1.0, 2.0, size=(64, 1, 1, 32)), tf.float32)
    weights = tf.constant(np.random.default_rng(3).normal(size=(64, 1, 1, 32)), tf.float32)

    def objective(clean):
        tf.random.set_seed(5)  # the same draw on every call
        return tf.reduce_sum(defence.perturb(clean) * weights)

    with tf.GradientTape() as tape:
        tape.watch(codes)
        value = objective(codes)
    along_the_code = float(tf.reduce_sum(tape.gradient(value, codes) * codes))
    assert along_the_code == pytest.approx(float(value), rel=1e-4)
    assert abs(float(value) - float(tf.reduce_sum(codes * weights))) > 1.0  # the noise is not negligible


def test_uncalibrated_noise_follows_the_batchs_spread():
    tf.random.set_seed(1)
    codes = tf.constant(np.random.default_rng(1).normal(0.0, 3.0, size=DRAWS), tf.float32)
    noise = defences.build("gaussian", 0.2).perturb(codes) - codes
    assert np.std(noise.numpy()) == pytest.approx(0.2 * np.std(codes.numpy()), rel=0.05)


def test_dropout_drops_the_configured_share_and_keeps_the_expected_code():
    tf.random.set_seed(2)
    sent = defences.build("dropout", 0.3).perturb(tf.ones(DRAWS)).numpy()
    dropped = np.mean(sent == 0.0)
    assert dropped == pytest.approx(0.3, abs=0.005)  # binomial sd 0.0013 at 128,000 entries
    np.testing.assert_allclose(sent[sent != 0.0], 1.0 / 0.7, rtol=1e-6)


def test_distance_correlation_equals_the_dcor_package():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 6))
    for y in (rng.normal(size=(24, 3)), np.sin(x[:, :2]) + 0.1 * rng.normal(size=(24, 2)), 2.0 * x + 1.0):
        ours = float(defences.distance_correlation(tf.constant(x), tf.constant(y)))
        assert ours == pytest.approx(dcor.distance_correlation(x, y), rel=1e-4)  # float32
    images = rng.uniform(size=(8, 105, 105, 1))
    codes = rng.normal(size=(8, 1, 1, 32))
    ours = float(defences.distance_correlation(tf.constant(images), tf.constant(codes)))
    assert ours == pytest.approx(dcor.distance_correlation(images.reshape(8, -1), codes.reshape(8, -1)), rel=1e-4)


def test_nopeek_penalty_has_a_finite_gradient_that_lowers_the_correlation():
    rng = np.random.default_rng(4)
    rows = rng.uniform(size=(16, 20))
    rows[1] = rows[0]  # equal images: a zero distance off the diagonal too
    images = tf.constant(rows, tf.float32)
    weights = tf.Variable(rng.normal(size=(20, 4)), dtype=tf.float32)
    nopeek = defences.build("nopeek", 1.0)
    before = float(nopeek.penalty(images, images @ weights))
    for _ in range(50):
        with tf.GradientTape() as tape:
            loss = nopeek.penalty(images, images @ weights)
        gradient = tape.gradient(loss, weights)
        assert np.all(np.isfinite(gradient.numpy()))
        weights.assign_sub(0.5 * gradient)
    assert float(nopeek.penalty(images, images @ weights)) < before - 0.02


def _defended_target(defence) -> TargetModel:
    model = TargetModel(defence=defence)
    rng = np.random.default_rng(5)
    for weight in model.on_device_model.weights:
        values = rng.normal(size=weight.shape).astype(np.float32)
        weight.assign(np.abs(values) + 0.5 if ("moving_variance" in weight.name or "gamma" in weight.name) else values)
    return model


def test_a_defended_stage_round_trips_through_hdf5_and_answers_like_the_device(tmp_path):
    images = np.random.default_rng(6).uniform(size=(64, 105, 105, 1)).astype(np.float32)
    codes = np.random.default_rng(7).normal(0.0, 2.0, size=(999, 32))
    device = _defended_target(defences.build("laplace", 0.5).calibrated(codes))
    path = save_mobile_stage(device, tmp_path / "stage.h5")
    with h5py.File(path, "r") as handle:
        assert json.loads(handle.attrs[DEFENCE_ATTRIBUTE]) == device.defence.config()  # data, not code
    loaded = load_intercepted(path)
    assert loaded.defence == device.defence
    clean = device.on_device_model(images, training=False).numpy()
    np.testing.assert_allclose(loaded.on_device_model(images, training=False).numpy(), clean, rtol=1e-5, atol=1e-5)
    noise = loaded.mobile_step(images).numpy() - clean
    assert np.std(noise) == pytest.approx(0.5 * device.defence.code_std, rel=0.05)
    assert not np.allclose(loaded.mobile_step(images).numpy(), loaded.mobile_step(images).numpy())  # random
    # the white-box attacker computes the clean code and reads the defence from the file
    np.testing.assert_allclose(attacks.clean_stage(loaded)(images).numpy(), clean, rtol=1e-5, atol=1e-5)
    assert attacks.defence_of(loaded) == device.defence
    # an undefended file loads as before
    save_mobile_stage(TargetModel(), tmp_path / "plain.h5")
    assert load_intercepted(tmp_path / "plain.h5").defence is defences.NO_DEFENCE


def test_a_file_whose_defence_record_is_bad_is_refused(tmp_path):
    path = save_mobile_stage(TargetModel(), tmp_path / "stage.h5")
    for record, message in (("{not json", "not JSON"), ('{"name": "os.system"}', "unknown defence"),
                            ('{"name": "laplace", "strength": 0.5, "code": "print()"}', "unknown parameters"),
                            ('{"name": "dropout", "strength": 2.0}', "must be in")):
        with h5py.File(path, "a") as handle:
            handle.attrs[DEFENCE_ATTRIBUTE] = record
        with pytest.raises(UsageError, match=message):
            load_intercepted(path)


def test_dropout_white_box_term_ignores_the_dropped_entries():
    dropout = defences.build("dropout", 0.5)
    clean = tf.constant([[1.0, 2.0, 3.0, 4.0]])
    sent = tf.constant([[2.0, 0.0, 6.0, 0.0]])  # entries 0 and 2 kept (scaled by 2), 1 and 3 dropped
    assert float(dropout.code_misfit(clean, sent)[0]) == pytest.approx(0.0)
    assert float(dropout.code_misfit(clean + [[1.0, 0.0, 0.0, 0.0]], sent)[0]) == pytest.approx(4.0 / 2)
    assert float(defences.NO_DEFENCE.code_misfit(clean, sent)[0]) == pytest.approx((1 + 4 + 9 + 16) / 4)


@pytest.mark.parametrize("arguments, message", [
    (["--defence", "laplace", "--strength", "0"], "must be in (0, 10]"),
    (["--defence", "dropout", "--strength", "1.5"], "must be in (0, 0.95]"),
    (["--defence", "nopeek"], "needs --strength"),
    (["--strength", "0.5"], "needs a defence"),
    (["--defence", "blur", "--strength", "0.5"], "invalid choice"),
])
def test_bad_defence_options_exit_2_with_a_message_and_write_nothing(tmp_path, capsys, arguments, message):
    out = tmp_path / "run"
    try:
        code = cli.main(["train-target", "--quick", "--out", str(out), *arguments])
    except SystemExit as refused:  # argparse's own refusal of an unknown choice
        code = refused.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_frontier_refuses_a_bad_grid_and_a_folder_of_other_settings(tmp_path, capsys):
    for point, message in (("laplace:abc", "must be a number"), ("blur:1", "Unknown defence"),
                           ("dropout:1.5", "must be in (0, 0.95]")):
        assert cli.main(["frontier", "--out", str(tmp_path / "bad"), "--grid", "none", point]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(UsageError, match="Unknown defence"):
        frontier.FrontierConfig(grid=(("blur", 0.5),))
    with pytest.raises(UsageError, match="must be in"):
        frontier.FrontierConfig(grid=(("gaussian", 50.0),))
    out = tmp_path / "sweep"
    out.mkdir()
    (out / frontier.CONFIG).write_text(json.dumps(frontier.FrontierConfig(seed=1).record()))
    with pytest.raises(UsageError, match="other settings"):
        frontier.run_frontier(frontier.FrontierConfig(seed=2), out)


def test_frontier_quick_runs_end_to_end_and_resumes(tmp_path, data_dir, quick_reproduce):
    # the quick sweep is the one `reproduce --quick` ran (grid laplace:1, its Part 2 target
    # beside it); a copy of it is resumed and shipped here
    made, _ = quick_reproduce
    for name in ("frontier", "part2"):
        shutil.copytree(made / name, tmp_path / name)
    out = tmp_path / "frontier"
    config = frontier.FrontierConfig(grid=reproduce.QUICK_GRID, quick=True, data_dir=data_dir)
    assert config.grid == (("laplace", 1.0),)
    result = json.loads((out / frontier.RESULT).read_text())
    row, dp_row = result["rows"]
    assert row["target"] == "laplace_1" and 0.0 <= row["val_accuracy"] <= 1.0
    assert dp_row["kind"] == "dp-sgd" and dp_row["defence"] == {"name": "dp-sgd", "epsilon": dp_row["epsilon"]}
    assert set(row["attacks"]) == {"decoder", "decoder_subset", "hybrid", "prior"}
    # balanced over small2's 5 alphabets: 12 and 4 images each; the decoder scored on both sets
    assert row["attacks"]["decoder"]["num_images"] == 60
    assert [row["attacks"][name]["num_images"] for name in frontier.COMPARED] == [20, 20, 20]
    # the strongest is chosen on the selection half of the same 20 images, by top-1 and then SSIM
    for group in ("seen", "unseen"):
        judged = {name: row["attacks"][name]["halves"].get(group, {}).get("select") or row["attacks"][name][group]
                  for name in frontier.COMPARED}
        scores = {name: (judged[name]["top1"]["mean"], judged[name]["ssim"]["mean"]) for name in frontier.COMPARED}
        assert scores[row["strongest"][group]] == max(scores.values())
    for attack in row["attacks"].values():
        for group in ("seen", "unseen"):
            top1 = attack[group]["top1"]
            assert top1["low"] <= top1["mean"] <= top1["high"]
    assert "same_character" in row["attacks"]["hybrid"]["seen"]  # the semantic measure beside top-1
    assert row["defence"]["name"] == "laplace" and row["defence"]["code_std"] > 0
    stage = load_intercepted(out / "targets" / "laplace_1" / run_folder.MOBILE_STAGE)
    assert stage.defence.strength == 1.0 and stage.defence.code_std == row["defence"]["code_std"]
    table = (out / frontier.TABLE).read_text().splitlines()
    assert len(table) == 3  # the header, the defended target, the DP target
    assert table[0].startswith("target,kind,defence,strength,epsilon,val_accuracy,decoder_seen_top1,")
    assert (out / frontier.FIGURE).stat().st_size > 0
    # started again: every piece is finished, nothing is trained or attacked anew
    printed = []
    again = frontier.run_frontier(config, out, dp_run=tmp_path / "part2", log=printed.append)
    assert again["rows"] == result["rows"]
    assert not any("epoch" in line for line in printed)
    # Part 1's steps of the defended target, then the 4 scored attacks of each target
    assert sum("done before, kept" in line for line in printed) == 3 + 4 + 4
    # shipped: the defended stage beside the entries already in the manifest, byte for byte, with
    # the command that remakes the sweep
    ship = tmp_path / "ship"
    ship.mkdir()
    (ship / run_folder.MANIFEST).write_text(json.dumps({"files": {"part1_mobile_stage.h5": {"run": "part1"}}}))
    manifest = shipping.export_frontier(out, ship, frontier.command(config, out))
    stage_file = ship / "defended_laplace_1_mobile_stage.h5"
    assert stage_file.read_bytes() == (out / "targets" / "laplace_1" / run_folder.MOBILE_STAGE).read_bytes()
    entry = manifest["files"][stage_file.name]
    assert entry["sha256"] == run_folder.sha256(stage_file) and "part1_mobile_stage.h5" in manifest["files"]
    assert "--defence laplace --strength 1" in entry["command"] and entry["metrics"]["defence"] == row["defence"]
    assert manifest["frontier"]["command"] == (f"omniglot-inversion frontier --out {out} --seed 0 --quick "
                                               "--grid laplace:1")
    assert json.loads((ship / frontier.RESULT).read_text()) == again
    assert load_intercepted(stage_file).defence.code_std == row["defence"]["code_std"]


def test_the_strongest_attack_is_chosen_among_the_scores_on_the_same_images():
    def scored(top1, ssim):
        return {"unseen": {"top1": {"mean": top1}, "ssim": {"mean": ssim}}}

    # the decoder on all of small2 is not compared: its candidates are other images
    attacks = {"decoder": scored(0.9, 0.9), "decoder_subset": scored(0.10, 0.2), "hybrid": scored(0.05, 0.9)}
    assert frontier.strongest(attacks, "unseen") == "decoder_subset"
    # a tie in top-1 (both at zero under a strong defence) goes to the higher SSIM
    attacks.update(decoder_subset=scored(0.0, 0.4), hybrid=scored(0.0, 0.5))
    assert frontier.strongest(attacks, "unseen") == "hybrid"


def test_the_frontier_chooses_the_strongest_on_one_half_and_reports_the_other():
    def scored(top1, select, report):
        return {"unseen": {"top1": {"mean": top1}, "ssim": {"mean": 0.5}},
                "halves": {"unseen": {"select": {"top1": {"mean": select}, "ssim": {"mean": 0.5}},
                                      "report": {"top1": {"mean": report, "low": 0.0, "high": 0.1}}}}}
    row = {"attacks": {"decoder_subset": scored(0.04, 0.05, 0.03), "hybrid": scored(0.05, 0.02, 0.08)}}
    # on all images the hybrid leads; on the selection half the decoder does, and is reported on the other
    row["strongest"] = {"unseen": frontier.strongest(row["attacks"], "unseen")}
    assert row["strongest"]["unseen"] == "decoder_subset"
    assert frontier.reported(row, "unseen") == ({"top1": {"mean": 0.03, "low": 0.0, "high": 0.1}}, "the other half")
    assert frontier.strongest_top1(row, "unseen")["mean"] == 0.03


def test_the_defence_table_orders_each_family_weak_to_strong_and_names_how_the_attack_was_chosen():
    def row(target, kind, name, strength, val, select, report):
        top1 = {"seen": {"top1": {"mean": report}, "ssim": {"mean": 0.5}}}
        halves = {"seen": {"select": {"top1": {"mean": select}, "ssim": {"mean": 0.5}},
                           "report": {"top1": {"mean": report}}}}
        attacks = {attack: {**top1, "halves": halves} for attack in frontier.COMPARED}
        return {"target": target, "kind": kind, "strength": strength, "val_accuracy": val,
                "defence": {"name": name}, "attacks": attacks, "strongest": {"seen": "hybrid"}}
    rows = [row("noise 0.3", "dp-sgd", "dp-sgd", None, 0.52, 0.7, 0.66),
            row("gaussian_1", "defence", "gaussian", 1.0, 0.69, 0.0, 0.01),
            row("none", "defence", "none", None, 0.76, 0.8, 0.83),
            row("gaussian_0.2", "defence", "gaussian", 0.2, 0.74, 0.1, 0.12),
            row("noise 0.7", "dp-sgd", "dp-sgd", None, 0.29, 0.1, 0.15)]
    lines = frontier.defence_table({"rows": rows}, epsilons={"noise 0.3": 210.2, "noise 0.7": 56.6})
    assert "(chosen on the other half)" in lines[0]
    assert lines[2:] == ["| none | 0.760 / 0.830 |  |  |",
                         "| Gaussian noise 0.2 / 1 | 0.740 / 0.120 | 0.690 / 0.010 |  |",
                         "| DP-SGD, noise 0.3 / 0.7 (epsilon 210.20 / 56.60) | 0.520 / 0.660 | 0.290 / 0.150 |  |"]
    for item in rows:  # scored without halves: chosen and reported on the same images
        for attack in item["attacks"].values():
            del attack["halves"]
    assert "seen top-1 (chosen on the same images)" in frontier.defence_table({"rows": rows})[0]
    for item in rows:  # rows that record the same-character rate show it beside top-1
        for attack in item["attacks"].values():
            attack["seen"]["same_character"] = {"mean": 0.25}
    lines = frontier.defence_table({"rows": rows})
    assert "seen top-1 / same character (chosen" in lines[0] and lines[2] == "| none | 0.760 / 0.830 / 0.250 |  |  |"
