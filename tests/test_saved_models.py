"""The shipped weights in saved_models/: every file listed with its sha256 and provenance, loadable
into fresh models, and reproducing the attacker MSE on small1 that the manifest records."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf

from omniglot_inversion import AttackModel
from omniglot_inversion.dp import accounting
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.data import as_arrays, load_split
from omniglot_inversion.network.interception import cut_at_mobile_output, load_intercepted
from omniglot_inversion.network.models import NUM_ALPHABETS
from omniglot_inversion.network.weights import save_weights
from omniglot_inversion.pipelines.attack_suite import EVALUATION, find_targets, headline_table
from omniglot_inversion.pipelines.frontier import DEFAULT_GRID, RESULT, slug
from omniglot_inversion.pipelines.run_folder import MANIFEST, sha256
from omniglot_inversion.pipelines.shipping import ATTACK_SUITE, CHECKSUMS, SHIP_LOG

SAVED = Path(__file__).resolve().parents[1] / "saved_models"
RUNS = ("part1", "dp_noise_0.7", "dp_noise_0.5", "dp_noise_0.3")
QUERIES = 50
RECORD_KEYS = {"kind", "run", "sha256", "command", "seed", "epochs", "attacker_epochs", "versions", "wall_seconds",
               "metrics"}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((SAVED / MANIFEST).read_text())


def _pairs():
    return [(SAVED / f"{run}_mobile_stage.h5", SAVED / f"{run}_attacker.h5") for run in RUNS]


def test_manifest_lists_every_shipped_file_with_its_checksum_and_provenance(manifest):
    # every run of the post is shipped complete, and any defended stage of the frontier sweep beside them
    assert manifest["missing"] == []
    # every file and table here is shipped by one full-size `reproduce`, the command that remakes them
    assert manifest["regenerate"].startswith("omniglot-inversion reproduce --out ")
    assert " --quick" not in manifest["regenerate"]
    shipped = sorted(path.name for path in SAVED.glob("*.h5"))
    posts = sorted(f"{run}_{kind}.h5" for run in RUNS for kind in ("target", "mobile_stage", "attacker"))
    defended = [name for name in shipped if name.startswith("defended_")]
    assert sorted(set(shipped) - set(defended)) == posts
    assert sorted(manifest["files"]) == shipped
    # every file of the folder, figures, tables and the attack suite's included, has its checksum
    everything = sorted(path.relative_to(SAVED).as_posix() for path in SAVED.rglob("*")
                        if path.is_file() and path.name not in (MANIFEST, SHIP_LOG))
    assert sorted(manifest[CHECKSUMS]) == everything
    for name, digest in manifest[CHECKSUMS].items():
        assert sha256(SAVED / name) == digest, f"{name} differs from the manifest"
    for name, record in manifest["files"].items():
        assert sha256(SAVED / name) == record["sha256"], f"{name} differs from the manifest"
        assert record["command"].startswith("omniglot-inversion part")
        assert record["versions"]["tensorflow"] == "2.15.1"
        assert len(record["commit"]) == 40, f"{name}: shipped from a checkout with changes ({record['commit']})"
        if name in defended:
            assert f"--defence {record['metrics']['defence']['name']}" in record["command"]
            assert load_intercepted(SAVED / name).defence.config() == record["metrics"]["defence"]
        else:
            assert RECORD_KEYS <= set(record), name
            assert 0.0 < record["metrics"]["small1_mse"] < 0.2
            if record["run"].startswith("dp_"):
                # the shipped DP models drew their noise from a secret key, so the seed does not give it away
                assert record["privacy"]["noise_source"].startswith("a secret key"), name
                assert "--reproducible-noise" not in record["command"]
    # the full-size frontier sweep is shipped: its files, and the stage of every defended grid point
    assert manifest["frontier"]["command"] == manifest["regenerate"]
    assert set(manifest["frontier"]["files"]) <= {path.name for path in SAVED.iterdir()}
    assert sorted(defended) == sorted(f"defended_{slug(name, strength)}_mobile_stage.h5"
                                      for name, strength in DEFAULT_GRID if name != "none")


def test_the_shipped_frontier_has_a_row_per_grid_point_and_dp_level_and_the_undefended_target_at_the_post():
    result = json.loads((SAVED / RESULT).read_text())
    rows = {row["target"]: row for row in result["rows"]}
    assert [row["target"] for row in result["rows"] if row["kind"] == "defence"] == [
        slug(name, strength) for name, strength in DEFAULT_GRID]
    assert sorted(row["epsilon"] for row in result["rows"] if row["kind"] == "dp-sgd") == pytest.approx(
        [3.39, 11.35, 82.16], abs=0.01)
    assert rows["none"]["val_accuracy"] == pytest.approx(0.727, abs=0.05)  # the post's validation accuracy
    for row in result["rows"]:
        for group in ("seen", "unseen"):
            assert row["strongest"][group] in row["attacks"]
            top1 = row["attacks"][row["strongest"][group]][group]["top1"]
            assert top1["low"] <= top1["mean"] <= top1["high"]


def test_the_shipped_attack_suite_measures_every_target_on_all_of_small2_and_is_readmes_table(manifest):
    folder = SAVED / ATTACK_SUITE
    result = json.loads((folder / EVALUATION).read_text())
    assert result["num_images"] == 3_120 and result["test_set"] == "small2"
    found = find_targets(SAVED)
    targets = [target.label for target in found]
    attacks = {target: [row["label"] for row in result["rows"] if row["target"] == target] for target in targets}
    for target in targets:
        assert attacks[target] == ["decoder", "decoder:background", "whitebox", "hybrid"], target
    for target, entry in manifest[ATTACK_SUITE]["targets"].items():
        assert entry["command"] == manifest["regenerate"], target
        assert len(entry["commit"]) == 40, f"{target}: shipped from a checkout with changes"
    for row in result["rows"]:
        assert (folder / row["figures"]["all_attacks"]).stat().st_size > 5_000
    readme = (SAVED.parent / "README.md").read_text()
    # the rows hold the post's accounting (recorded before runs kept their account); README shows
    # each target's guarantee, accounted from its training's records, steps and sampling
    for line in headline_table(result, epsilons={target.label: target.epsilon for target in found}):
        assert line in readme, f"README's attack-suite table lacks the shipped line {line!r}"


def test_each_shipped_defended_stage_answers_like_its_device():
    """Queried again and again with the same images, a noisy stage's codes scatter by the recorded
    strength times the code's spread, and a dropout stage zeroes the recorded share of entries.
    50 queries of 4 codes of 32 entries: 6,400 draws, so the spread is within 1.5 % of its value and
    the share within 0.6 % (one standard error), well inside the tolerances."""
    images = np.random.default_rng(2).uniform(size=(4, 105, 105, 1)).astype(np.float32)
    for path in sorted(SAVED.glob("defended_*_mobile_stage.h5")):
        stage = load_intercepted(path)
        defence = stage.defence.config()
        codes = np.stack([stage.mobile_step(images, training=False).numpy() for _ in range(QUERIES)])
        if defence["name"] in ("gaussian", "laplace", "nopeek+laplace"):
            relative = defence.get("noise_scale", defence["strength"])  # NoPeek's weight is not the noise's
            # the spread about each entry's mean over the queries, corrected for that mean's own estimate
            spread = float(np.std(codes - codes.mean(axis=0))) * np.sqrt(QUERIES / (QUERIES - 1))
            assert spread == pytest.approx(relative * defence["code_std"], rel=0.05), path.name
        elif defence["name"] == "dropout":
            assert float(np.mean(codes == 0.0)) == pytest.approx(defence["strength"], abs=0.02), path.name
        else:  # NoPeek acts in training only: the trained stage gives the same code every time
            np.testing.assert_allclose(codes[0], codes[-1], rtol=1e-5, atol=1e-5, err_msg=path.name)


def test_each_shipped_target_holds_the_shipped_mobile_stage():
    from omniglot_inversion.pipelines.membership_audit import find_audit_targets

    images = np.random.default_rng(1).uniform(size=(4, 105, 105, 1)).astype(np.float32)
    targets = find_audit_targets(SAVED)
    assert [target.label for target in targets] == ["non-private", "noise 0.7", "noise 0.5", "noise 0.3"]
    for run, target in zip(RUNS, targets, strict=True):
        codes = load_intercepted(SAVED / f"{run}_mobile_stage.h5").mobile_step(images, training=False).numpy()
        if run == "part1":
            assert np.array_equal(target.model.mobile_step(images, training=False).numpy(), codes)
        else:
            cut = cut_at_mobile_output(target.model)
            np.testing.assert_allclose(cut(images, training=False).numpy(), codes, rtol=1e-6, atol=1e-6)
        probabilities = target.model(images, training=False).numpy()
        assert probabilities.shape == (4, NUM_ALPHABETS)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_shipped_files_load_into_fresh_models_with_the_right_shapes():
    images = np.random.default_rng(0).uniform(size=(4, 105, 105, 1)).astype(np.float32)
    for mobile_stage, attacker_weights in _pairs():
        target = load_intercepted(mobile_stage)
        codes = target.mobile_step(images, training=False)
        assert codes.shape == (4, 1, 1, 32)
        attacker = AttackModel()
        attacker.load_weights(attacker_weights)
        assert attacker(codes).shape == (4, 105, 105, 1)


def _decode_by_hand(attacker_weights: Path, codes: np.ndarray) -> np.ndarray:
    """The post's decoder written out with TensorFlow's raw transposed convolution, on the arrays
    the weights file holds (read with h5py): none of the package's model code is involved."""
    strides_and_sizes = ((1, 9), (2, 23), (2, 51), (2, 105))
    hidden = tf.constant(codes)
    with h5py.File(attacker_weights, "r") as handle:
        for name, (stride, size) in zip(handle.attrs["layer_names"], strides_and_sizes, strict=True):
            group = handle[name][name]
            kernel, bias = np.asarray(group["kernel:0"]), np.asarray(group["bias:0"])
            shape = (len(codes), size, size, kernel.shape[2])
            hidden = tf.nn.relu(tf.nn.conv2d_transpose(hidden, kernel, shape, stride, padding="VALID") + bias)
    return hidden.numpy()


def test_shipped_attackers_reproduce_the_recorded_small1_mse(manifest, data_dir):
    images = as_arrays(load_split("small1", data_dir))[0]
    for mobile_stage, attacker_weights in _pairs():
        recorded = manifest["files"][attacker_weights.name]["metrics"]["small1_mse"]
        # the stage as plain Keras loads it (our own file, so deserialising it is safe here)
        stage = tf.keras.models.load_model(mobile_stage, compile=False)
        codes = np.concatenate([stage(images[i:i + 512], training=False).numpy() for i in range(0, len(images), 512)])
        guesses = np.clip(_decode_by_hand(attacker_weights, codes), 0.0, 1.0)
        assert float(np.mean((guesses - images) ** 2)) == pytest.approx(recorded, abs=5e-4)


def test_export_refuses_runs_that_are_not_finished(tmp_path):
    from omniglot_inversion.io.files import write_json
    from omniglot_inversion.pipelines.shipping import export_models

    part1, part2 = tmp_path / "part1", tmp_path / "part2"
    write_json(part1 / "metrics.json", {"config": {}, "target": {}})
    with pytest.raises(UsageError, match=r"missing: attacker, test.*part1 --out .* --resume"):
        export_models(part1, part2, tmp_path / "out", "regenerate")
    assert not (tmp_path / "out").exists()


def test_export_of_an_unfinished_part2_ships_the_finished_levels_and_lists_the_rest(tmp_path, data_dir):
    import shutil

    from omniglot_inversion import TargetModel, build_complete_model
    from omniglot_inversion.io.files import write_json
    from omniglot_inversion.pipelines import readme_tables
    from omniglot_inversion.pipelines.membership_audit import find_audit_targets
    from omniglot_inversion.pipelines.run_folder import package_commit
    from omniglot_inversion.pipelines.shipping import export_models

    def run_folder(folder, name):
        folder.mkdir(parents=True)
        complete = TargetModel() if name == "part1" else build_complete_model()
        complete(np.zeros((1, 105, 105, 1), np.float32))
        save_weights(complete, folder / ("target_weights.h5" if name == "part1" else "dp_model_weights.h5"))
        shutil.copyfile(SAVED / f"{name}_mobile_stage.h5", folder / "mobile_stage.h5")
        shutil.copyfile(SAVED / f"{name}_attacker.h5", folder / "attacker_weights.h5")
        shutil.copyfile(SAVED / f"{name}_reconstruction.png", folder / "reconstruction.png")

    history = [{"epoch": epoch, "train_accuracy": 0.1 * epoch, "val_accuracy": 0.05 * epoch, "train_mse": 0.5 / epoch,
                "seconds": 1.0} for epoch in (1, 2)]
    step = {"seconds": 1.0, "train_accuracy": 0.2, "val_accuracy": 0.1, "train_mse": 0.25, "test_mse": 0.06,
            "history": history, "num_images": 3_120}
    run_folder(tmp_path / "part1", "part1")
    write_json(tmp_path / "part1" / "metrics.json", {
        "config": {"seed": 0, "epochs": 10, "attacker_epochs": 100, "batch_size": 32}, "versions": {},
        "target": step, "attacker": step, "test": step, "commits": {"target": "abc", "test": "abc"}})
    run_folder(tmp_path / "part2" / "noise_0.7", "dp_noise_0.7")
    config = {"seed": 0, "epochs": 20, "attacker_epochs": 100, "batch_size": 32, "engine": "fast",
              "l2_norm_clip": 1.0, "learning_rate": 0.005, "delta": 1e-5, "normalization": "batch",
              "noise_multipliers": [0.7, 0.5]}
    account = accounting.training_guarantee(11_000, 32, 0.7, 8_240, 1e-5, "poisson")
    write_json(tmp_path / "part2" / "metrics.json", {"config": config, "versions": {}, "noise_levels": {
        "0.7": {"epsilon": account["epsilon"], "account": account, "epsilon_post": 3.39, "epsilon_post_2020": 4.02,
                "target": step, "attacker": step, "test": step},
        "0.5": {"epsilon": 13.0, "epsilon_post": 11.35, "epsilon_post_2020": 12.47}}})
    out = tmp_path / "root" / readme_tables.SHIPPED
    with pytest.raises(UsageError, match="has not finished noise 0.5"):
        export_models(tmp_path / "part1", tmp_path / "part2", out, "regenerate", data_dir=data_dir)
    manifest = export_models(tmp_path / "part1", tmp_path / "part2", out, "regenerate",
                             data_dir=data_dir, require_all=False)
    assert manifest["missing"] == ["dp_noise_0.5"] and manifest["regenerate"] == "regenerate"
    assert sorted(manifest["files"]) == sorted(f"{run}_{kind}.h5" for run in ("part1", "dp_noise_0.7")
                                               for kind in ("target", "mobile_stage", "attacker"))
    assert sorted(manifest[CHECKSUMS]) == sorted(path.name for path in (out).iterdir()
                                                 if path.name != MANIFEST)
    assert manifest["files"]["part1_target.h5"]["trained_at"] == {"target": "abc", "test": "abc"}
    # the complete targets are what the membership audit of the shipped folder reads
    audited = find_audit_targets(out)
    assert [(t.label, t.epsilon, t.train_size) for t in audited] == [("non-private", None, 11_000),
                                                                      ("noise 0.7", account["epsilon"], 11_000)]
    assert manifest["files"]["dp_noise_0.7_target.h5"]["metrics"]["epsilon_post"] == 3.39
    assert manifest["files"]["part1_target.h5"]["commit"] == package_commit() is not None
    assert "--noise 0.7 0.5" in manifest["files"]["dp_noise_0.7_attacker.h5"]["command"]
    assert "privacy" not in manifest["files"]["part1_target.h5"]
    # README's Part 1 table shows the post's per-epoch rows from the histories the manifest keeps
    entry = manifest["files"]["part1_target.h5"]
    assert [row["epoch"] for row in entry["history"]["target"]] == [1, 2]
    assert "seconds" not in entry["history"]["target"][0]
    table = "\n".join(readme_tables.part1_table(tmp_path / "root"))
    assert "| target, epoch 1: train / validation accuracy | 0.100 / 0.050 | 0.195 / 0.377 |" in table
    assert "epoch 2 | 0.2500 | 0.2010 |" in table and "on 3,120 `small2` images | 0.0600 |" in table
    (row,) = readme_tables.part2_table(tmp_path / "root")[2:]
    assert row.startswith(f"| noise 0.7 | {account['epsilon']:.2f} | 3.39 / 4.02 (4.0) | 0.200 (0.37) | 0.100 |")
    # the same files give the same small1 MSE as the shipped manifest records
    shipped = json.loads((SAVED / MANIFEST).read_text())["files"]["dp_noise_0.7_attacker.h5"]["metrics"]
    assert manifest["files"]["dp_noise_0.7_attacker.h5"]["metrics"]["small1_mse"] == pytest.approx(
        shipped["small1_mse"], abs=1e-6)
