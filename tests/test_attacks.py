"""The attack suite on real images at small sizes: shapes and range, the white-box search's code
error, the background surrogate set's separation from small2, resumable searches, and the
command's refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from omniglot_inversion import attacks, cli
from omniglot_inversion.attacks import whitebox
from omniglot_inversion.io import data
from omniglot_inversion.measure.assessment import TestSet, verdict
from omniglot_inversion.network.interception import load_intercepted
from omniglot_inversion.network.models import AttackModel
from omniglot_inversion.pipelines import attack_run

SAVED = Path(__file__).resolve().parents[1] / "saved_models"
STAGE = SAVED / "part1_mobile_stage.h5"


@pytest.fixture(scope="module")
def target():
    return load_intercepted(STAGE)


@pytest.fixture(scope="module")
def images(data_dir):
    """64 small1 images (the attacker's own) and 6 small2 images to invert."""
    surrogate = data.as_arrays(data.load_split("small1", data_dir, limit=64))[0]
    test = data.as_arrays(data.load_split("small2", data_dir, limit=6))[0]
    return surrogate, test


def _check_reconstructions(result: np.ndarray, count: int) -> None:
    assert result.shape == (count, 105, 105, 1) and result.dtype == np.float32
    assert 0.0 <= result.min() and result.max() <= 1.0


@pytest.mark.parametrize("method", attacks.METHODS)
def test_every_attack_returns_images_of_the_documented_shape_and_range(method, target, images):
    surrogate, test = images
    codes = attacks.query(attacks.stage_function(target), test)
    attack = attacks.build_attack(method, decoder=attacks.DecoderAttack(epochs=1), iterations=3, batch_size=4)
    result = attack.run(target, surrogate, codes)
    _check_reconstructions(result, len(test))
    assert not np.allclose(result, result[:1])  # each code gets its own image


def test_whitebox_search_brings_the_code_error_below_the_mean_images(target, images):
    surrogate, test = images
    codes = attacks.query(attacks.stage_function(target), test)
    search = attacks.WhiteboxAttack()  # the defaults: at most 50 steps, stopped at a plateau
    found = search.run(target, surrogate, codes)
    errors = attacks.code_error(target, found, codes, surrogate.mean(axis=0))
    # the mean image's own code error is 1 by definition; the search moves every image's code closer
    start = attacks.code_error(target, search.starts(codes), codes, surrogate.mean(axis=0))
    np.testing.assert_allclose(start, 1.0, rtol=1e-5)
    assert errors.max() < 1.0 and errors.mean() < 0.3
    steps = search.search_log[0]["iterations"]
    assert steps < 50 and steps % whitebox.PLATEAU_WINDOW == 0  # it stopped at a plateau, not at the cap
    assert search.search_log[0]["loss"] > 0


def test_whitebox_search_stops_at_a_plateau_of_its_loss(target, images):
    surrogate, test = images
    codes = attacks.query(attacks.stage_function(target), test[:2])
    # a tolerance no window meets: the search stops at the second check (2 windows of 7 steps)
    stopped = attacks.WhiteboxAttack(iterations=200, tolerance=0.99, window=7)
    stopped.run(target, surrogate, codes)
    assert stopped.search_log[0]["iterations"] == 14 and stopped.options()["plateau_window"] == 7
    full = attacks.WhiteboxAttack(iterations=60, tolerance=None)
    full.run(target, surrogate, codes)
    assert full.search_log[0]["iterations"] == 60


@pytest.fixture
def without_op_determinism():
    """Op determinism off for one test, as it was after: a test before it in the same process may
    have turned it on (`training.set_seed(deterministic=True)`), and XLA compiles no deterministic
    MaxPool gradient. TensorFlow has no public switch to turn it off again."""
    from tensorflow.python.framework import config

    enabled = config.is_op_determinism_enabled()
    config.disable_op_determinism()
    yield
    if enabled:
        config.enable_op_determinism()


def test_the_search_compiled_with_xla_fits_the_code_as_the_default_graph_does(target, images,
                                                                                without_op_determinism):
    from omniglot_inversion.attacks.whitebox import CodeSearch

    surrogate, test = images
    stage = attacks.stage_function(target)
    codes = attacks.query(stage, test[:2])
    starts = np.broadcast_to(surrogate.mean(axis=0), test[:2].shape).copy()
    found = {jit: CodeSearch(stage, (105, 105, 1), iterations=20, tv_weight=1.0, learning_rate=whitebox.LEARNING_RATE,
                             tolerance=None, jit_compile=jit)(starts, codes) for jit in (False, True)}
    errors = {jit: attacks.code_error(target, result, codes, surrogate.mean(axis=0)) for jit, result in found.items()}
    # Adam amplifies XLA's other rounding into other pixels, not into a worse fit
    assert errors[False].max() < 0.98 and errors[True].max() < 0.98
    assert abs(errors[True].mean() - errors[False].mean()) < 0.1


def test_prior_search_lowers_the_code_error_and_beats_random_latents(target, images):
    surrogate, test = images
    decoder = AttackModel()
    decoder.load_weights(SAVED / "part1_attacker.h5")
    codes = attacks.query(attacks.stage_function(target), test)
    prior = attacks.ImagePrior()
    prior.fit(surrogate, epochs=10, batch_size=16, seed=0)
    mean = surrogate.mean(axis=0)
    start = attacks.PriorAttack(attacks.DecoderAttack(attacker=decoder), prior=prior, iterations=0)
    start_images = start.run(target, surrogate, codes)  # 0 steps: the decoder's guess itself
    search = attacks.PriorAttack(attacks.DecoderAttack(attacker=decoder), prior=prior, iterations=60)
    found = search.run(target, surrogate, codes)
    encoded = prior.generate(prior.encode(start_images))  # where the latent search starts
    random = attacks.PriorAttack(attacks.DecoderAttack(attacker=decoder), prior=prior, iterations=0, start="random")
    random_images = random.run(target, surrogate, codes)
    error = {name: attacks.code_error(target, images, codes, mean).mean()
             for name, images in (("found", found), ("encoded", encoded), ("random", random_images))}
    assert error["found"] < error["encoded"] and error["found"] < error["random"], error
    assert search.options()["prior"]["epochs"] == "given" and search.search_log[0]["iterations"] <= 60


def test_hybrid_starts_from_the_decoders_reconstruction(target, images):
    surrogate, test = images
    decoder = AttackModel()
    decoder.load_weights(SAVED / "part1_attacker.h5")
    codes = attacks.query(attacks.stage_function(target), test)
    hybrid = attacks.HybridAttack(attacks.DecoderAttack(attacker=decoder), iterations=0)
    np.testing.assert_allclose(hybrid.run(target, surrogate, codes),
                               np.clip(decoder(codes).numpy(), 0.0, 1.0), atol=1e-6)


def test_search_batches_are_independent_and_resume_from_saved_batches(tmp_path, target, images):
    surrogate, test = images
    codes = attacks.query(attacks.stage_function(target), test[:4])
    whole = attacks.WhiteboxAttack(iterations=5, batch_size=4).run(target, surrogate, codes)
    halves = attacks.WhiteboxAttack(iterations=5, batch_size=2, checkpoint_dir=tmp_path).run(target, surrogate, codes)
    np.testing.assert_allclose(whole, halves, atol=1e-4)
    assert len(list(tmp_path.glob("batch-*.npz"))) == 2
    # a rerun reads the saved batches instead of searching again: poison one to prove it
    saved = tmp_path / "batch-000000.npz"
    with np.load(saved) as batch:
        np.savez(saved, codes=batch["codes"], images=np.zeros_like(batch["images"]))
    again = attacks.WhiteboxAttack(iterations=5, batch_size=2, checkpoint_dir=tmp_path).run(target, surrogate, codes)
    assert again[:2].max() == 0.0
    np.testing.assert_allclose(again[2:], halves[2:], atol=1e-6)


def _hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(np.packbits(image > 0.5).tobytes()).hexdigest() for image in images}


def test_background_surrogate_shares_no_alphabet_and_no_image_with_small2(data_dir):
    background = attacks.load_surrogate("background", data_dir)
    small2_images, small2_alphabets = data.as_arrays(data.load_split("small2", data_dir))
    names = data.alphabet_names(data_dir)
    assert {names[a] for a in np.unique(small2_alphabets)} == {
        "Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"}
    assert len(np.unique(background.alphabets)) == 25
    assert not set(np.unique(background.alphabets)) & set(np.unique(small2_alphabets))
    assert not _hashes(background.images) & _hashes(small2_images)
    # small2's five alphabets hold 3,120 of the train split's 19,280 images: exactly those are removed
    assert len(background.images) == 19_280 - 3_120


def test_verdict_counts_a_metric_only_when_it_beats_every_baseline_after_holm():
    rng = np.random.default_rng(0)
    count = 100
    zeros = np.zeros(count)
    def hits(number):
        values = np.zeros(count)
        values[:number] = 1.0
        return values
    baseline = {"mse": rng.uniform(0.06, 0.07, count), "top1": zeros}
    shuffled = {"mse": rng.uniform(0.08, 0.10, count), "top1": zeros}
    # lower MSE on every image; 5 hits where neither baseline hits: McNemar p = 1/32 before Holm
    attack = {"mse": baseline["mse"] - 0.01, "top1": hits(5)}
    result = verdict(attack, {"mean": baseline, "shuffled": shuffled}, metrics=("mse", "top1"))
    assert result["metrics"]["mse"]["beats_every_baseline"] and result["leaks"]
    assert result["metrics"]["mse"]["best_baseline"] == "mean"
    assert result["metrics"]["mse"]["margin"] == pytest.approx(0.01)
    assert result["metrics"]["top1"]["margin"] == pytest.approx(0.05)
    # unadjusted, 1/32 against each baseline clears 0.05; Holm over the four tests multiplies the
    # third smallest by 2, and the largest is held at least as high (0.0625)
    assert result["metrics"]["top1"]["p_adjusted"] == pytest.approx({"mean": 2 / 32, "shuffled": 2 / 32})
    assert not result["metrics"]["top1"]["beats_every_baseline"]
    assert "Holm" in result["test"] and result["num_images"] == count
    # ten more hits clear it; an attack no better than the baselines leaks nothing
    assert verdict({**attack, "top1": hits(15)}, {"mean": baseline, "shuffled": shuffled},
                   metrics=("mse", "top1"))["metrics"]["top1"]["beats_every_baseline"]
    assert not verdict({"mse": baseline["mse"] + 0.01, "top1": zeros}, {"mean": baseline, "shuffled": shuffled},
                       metrics=("mse", "top1"))["leaks"]


def test_attack_command_writes_reconstructions_record_and_figure(tmp_path, data_dir, capsys):
    out = tmp_path / "attack"
    argv = ["attack", "--intercepted", str(STAGE), "--method", "hybrid", "--quick", "--limit", "12",
            "--iterations", "2", "--attacker-epochs", "1", "--out", str(out), "--data-dir", data_dir]
    assert cli.main(argv) == 0
    assert "hybrid: MSE" in capsys.readouterr().out
    with np.load(out / attack_run.RECONSTRUCTIONS) as saved:
        assert saved["originals"].shape == saved["reconstructions"].shape == (12, 105, 105, 1)
        assert saved["originals"].dtype == saved["reconstructions"].dtype == np.float32
        assert saved["alphabets"].shape == (12,)
        test = data.as_arrays(data.load_split("small2", data_dir, limit=12))[0]
        np.testing.assert_array_equal(saved["originals"], test)
    record = json.loads((out / attack_run.RESULT).read_text())
    assert record["method"] == "hybrid" and record["options"]["iterations"] == 2
    assert record["options"]["decoder"]["epochs"] == 1 and record["num_surrogate_images"] == 256
    assert record["seconds"]["invert"] > 0
    metrics = record["metrics"]
    assert {"ssim_above_0.3", "top1", "top5", "same_character"} <= set(metrics["attack"])
    assert set(metrics["seen_unseen"]) == {"seen", "unseen"}  # small2 opens with Greek, a small1 alphabet
    assert metrics["code_error"]["low"] <= metrics["code_error"]["mean"] <= metrics["code_error"]["high"]
    for figure in (attack_run.FIGURE, attack_run.ALPHABET_FIGURE):
        assert (out / figure).stat().st_size > 5_000
    assert (out / attack_run.ATTACKER_WEIGHTS).exists()
    assert not (out / attack_run.CHECKPOINTS).exists() and not list(out.glob(".*partial*"))
    # a finished folder is refused without --overwrite, and nothing in it changes
    before = (out / attack_run.RESULT).read_bytes()
    assert cli.main(argv) == 2
    assert "already holds an attack (attack.json)" in capsys.readouterr().err
    assert (out / attack_run.RESULT).read_bytes() == before


def test_a_scored_attack_needs_no_reconstructions_file_but_one_to_score_anew_does(tmp_path):
    spec = attack_run.AttackSpec(method="whitebox")
    figures = {"reconstructions": attack_run.FIGURE, "alphabets": attack_run.ALPHABET_FIGURE}
    record = {"spec": spec.record(), "num_images": 5, "metrics": {}, "figures": figures,
              "scoring_version": attack_run.SCORING_VERSION}
    (tmp_path / attack_run.RESULT).write_text(json.dumps(record))
    for name in figures.values():
        (tmp_path / name).write_bytes(b"png")
    assert attack_run.finished(tmp_path, spec, 5) == record and attack_run.scored(tmp_path, record)
    assert attack_run.finished(tmp_path, spec, 6) is None
    assert attack_run.finished(tmp_path, attack_run.AttackSpec(method="hybrid"), 5) is None
    # scored by another version, or a figure gone: of use only while its reconstructions are kept
    for changed, gone in ((dict(scoring_version=0), None), ({}, attack_run.ALPHABET_FIGURE)):
        if gone:
            (tmp_path / gone).unlink()
        (tmp_path / attack_run.RESULT).write_text(json.dumps({**record, **changed}))
        assert attack_run.finished(tmp_path, spec, 5) is None
        (tmp_path / attack_run.RECONSTRUCTIONS).write_bytes(b"")
        assert not attack_run.scored(tmp_path, attack_run.finished(tmp_path, spec, 5))
        (tmp_path / attack_run.RECONSTRUCTIONS).unlink()
    # the record written between saving the reconstructions and scoring them holds no metrics
    (tmp_path / attack_run.RESULT).write_text(json.dumps({"spec": spec.record(), "num_images": 5}))
    assert attack_run.finished(tmp_path, spec, 5) is None


@pytest.mark.parametrize("bad, message", [
    (["--method", "telepathy"], "invalid choice: 'telepathy'"),
    (["--limit", "0"], "must be at least 1"),
    (["--surrogate", "everything"], "invalid choice: 'everything'"),
])
def test_attack_command_refuses_bad_options_with_exit_2(bad, message, tmp_path, capsys):
    out = tmp_path / "attack"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["attack", "--intercepted", str(STAGE), "--out", str(out), *bad])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_attack_command_refuses_a_file_that_is_not_an_on_device_stage(tmp_path, capsys):
    (tmp_path / "notes.h5").write_text("not a model")
    out = tmp_path / "attack"
    assert cli.main(["attack", "--intercepted", str(tmp_path / "notes.h5"), "--out", str(out)]) == 2
    assert "is neither a Keras HDF5 file nor a .keras file" in capsys.readouterr().err
    assert not out.exists()


def test_attack_labels_parse_into_specs():
    spec = attack_run.parse_label("hybrid:background", iterations=7)
    assert (spec.method, spec.surrogate, spec.iterations) == ("hybrid", "background", 7)
    assert spec.label == "hybrid:background"
    assert attack_run.parse_label("decoder").decoder_epochs == 100
    assert attack_run.parse_label("decoder:background").decoder_epochs == 20
    with pytest.raises(attack_run.UsageError, match="Unknown attack method 'decoders'"):
        attack_run.parse_label("decoders")
    with pytest.raises(attack_run.UsageError, match="Unknown surrogate set 'small3'"):
        attack_run.parse_label("decoder:small3")


def test_a_spec_records_each_methods_own_search_settings_unless_given():
    from omniglot_inversion.attacks import prior

    own = {method: attack_run.AttackSpec(method=method) for method in ("whitebox", "hybrid", "prior")}
    assert [(own[m].iterations, own[m].tolerance) for m in ("whitebox", "hybrid")] == \
        [(whitebox.ITERATIONS, whitebox.PLATEAU_TOLERANCE)] * 2
    assert (own["prior"].iterations, own["prior"].tolerance) == (prior.ITERATIONS, prior.PLATEAU_TOLERANCE)
    assert own["prior"].record()["tolerance"] == prior.PLATEAU_TOLERANCE != whitebox.PLATEAU_TOLERANCE
    given = attack_run.AttackSpec(method="prior", iterations=9, tolerance=None)  # None: no plateau stop
    assert (given.iterations, given.tolerance) == (9, None)


def test_test_set_subset_keeps_labels_aligned():
    test = TestSet(np.zeros((3, 105, 105, 1), np.float32), np.array([1, 2, 3]), np.array([4, 5, 6]), ["x"])
    kept = test.subset(np.array([True, False, True]))
    assert kept.alphabets.tolist() == [1, 3] and kept.characters.tolist() == [4, 6]
