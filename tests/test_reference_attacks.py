"""LiRA and RMIA: they find the members of a model that memorises, and stay at chance against one
that never saw them; on scores built to show each case, then end to end on trained targets."""

import json

import numpy as np
import pytest

from omniglot_inversion import cli
from omniglot_inversion.measure import membership, reference_attacks
from omniglot_inversion.pipelines import membership_audit, part1, reference_models, run_folder


def _synthetic(member_shift: float, records: int = 600, models: int = 8, seed: int = 0):
    """Logit confidences: each record has its own difficulty, reference models add 2 where they
    trained on it; the target adds ``member_shift`` to its members (the first half)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 2, records)
    inside = reference_models.halves(models, records, seed)
    reference = difficulty[None, :] + 2.0 * inside + rng.normal(0, 0.5, (models, records))
    members = np.arange(records) < records // 2
    target = difficulty + member_shift * members + rng.normal(0, 0.5, records)
    return target, reference, inside, members


def test_halves_give_every_record_in_and_out_models():
    inside = reference_models.halves(5, 101, seed=3)
    assert set(inside.sum(axis=0)) == {2, 3} and abs(inside.sum() - 5 * 101 / 2) <= 1
    assert not np.array_equal(inside, reference_models.halves(5, 101, seed=4))


@pytest.mark.parametrize("attack", ["lira_online", "lira_offline", "rmia_online", "rmia_offline"])
def test_reference_attacks_find_memorised_members_and_stay_at_chance_otherwise(attack):
    def scores(target, reference, inside):
        if attack.startswith("lira"):
            return reference_attacks.lira(target, reference, inside, online=attack.endswith("online"))
        # RMIA takes probabilities: the logistic of the logit confidences
        return reference_attacks.rmia(1 / (1 + np.exp(-target)), 1 / (1 + np.exp(-reference)), inside,
                                      online=attack.endswith("online"))

    target, reference, inside, members = _synthetic(member_shift=2.0)
    found = scores(target, reference, inside)
    audit = membership.score_audit(found[members], found[~members], attack=attack, delta=1e-5, samples=200)
    # the records' own difficulty hides the members from a plain threshold on the target's confidence
    plain = membership.score_audit(target[members], target[~members], attack="threshold", delta=1e-5, samples=200)
    assert audit["auc"]["mean"] > 0.9 > plain["auc"]["mean"] + 0.1
    assert audit["tpr_at_fpr_0.01"]["low"] > 0.3 > plain["tpr_at_fpr_0.01"]["mean"]
    blind_target, reference, inside, members = _synthetic(member_shift=0.0, seed=1)
    blind = scores(blind_target, reference, inside)
    audit = membership.score_audit(blind[members], blind[~members], attack=attack, delta=1e-5, samples=200)
    assert audit["auc"]["low"] < 0.5 < audit["auc"]["high"]
    assert audit["tpr_at_fpr_0.01"]["low"] < 0.01 < audit["tpr_at_fpr_0.01"]["high"]


def test_logit_confidence_keeps_its_digits_for_a_confident_model():
    probabilities = np.array([[1.0 - 1e-9, 1e-9, 0.0], [0.2, 0.3, 0.5]])
    assert reference_attacks.logit_confidence(probabilities, np.array([0, 2])) == pytest.approx(
        [np.log((1 - 1e-9) / 1e-9), 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="models, records"):
        reference_attacks.lira(np.zeros(3), np.zeros((2, 4)), np.zeros((2, 4), bool))


@pytest.fixture(scope="module")
def memorising_run(tmp_path_factory, data_dir):
    """A Part 1 target trained for 30 epochs on 48 records: it memorises them."""
    out = tmp_path_factory.mktemp("memorising") / "run"
    config = part1.Part1Config(epochs=30, train_size=48, val_size=48, data_dir=data_dir, seed=2)
    run_folder.prepare_run_folder(out, config)
    part1.train_target_step(config, out, log=lambda line: None)
    return out


def test_the_audit_with_reference_models_finds_the_members_of_a_memorising_target(memorising_run, tmp_path,
                                                                                 data_dir, capsys):
    out = tmp_path / "audit"
    assert cli.main(["membership", str(memorising_run), "--out", str(out), "--data-dir", data_dir,
                     "--reference-models", "4"]) == 0
    result = json.loads((out / membership_audit.RESULT).read_text())
    (row,) = result["rows"]
    attacks = row["reference_attacks"]
    assert result["reference_models"] == attacks["models"] == 4 and attacks["population"] == 96
    assert row["members"] == row["non_members"] == 48
    for name in membership_audit.REFERENCE_ATTACKS:  # with 4 reference models of 48 records: AUC 0.69-0.81
        assert attacks[name]["auc"]["low"] > 0.55, name
        assert set(attacks[name]["tpr_at_fpr_0.0001"]) == {"mean", "low", "high"}
    assert "lira online: AUC" in capsys.readouterr().out
    models = list((out / membership_audit.REFERENCES).rglob("reference_*.h5"))
    assert len(models) == 4
    # run again: the row and the reference models are kept
    stamps = [path.stat().st_mtime_ns for path in models]
    assert cli.main(["membership", str(memorising_run), "--out", str(out), "--data-dir", data_dir,
                     "--reference-models", "4"]) == 0
    assert "done before, kept" in capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in models] == stamps


def test_the_audit_stays_at_chance_against_a_target_that_never_saw_the_members(memorising_run, tmp_path, data_dir):
    """The target here is a reference model of the same recipe, trained on its own random half of
    the population: its half has nothing to do with the records the audit calls members."""
    out = tmp_path / "audit"
    (target,) = membership_audit.find_audit_targets(memorising_run)
    images, labels = (np.asarray(array) for array in membership_audit.data.as_arrays(
        membership_audit.data.load_split("test", data_dir, limit=96)))
    inside = reference_models.halves(1, 96, seed=9)
    (blind_weights,) = reference_models.reference_models(target.recipe, images, labels, inside, tmp_path / "blind",
                                                         seed=9, log=lambda line: None)
    blind_model = reference_models.empty_model(target.recipe)
    blind_model.load_weights(blind_weights)
    blind = membership_audit.AuditTarget("blind", blind_model, 48, 48, 1e-5, None, blind_weights, target.recipe)
    row = membership_audit.audit_target(blind, data_dir, reference_count=4, out=out, log=lambda line: None)
    for name in membership_audit.REFERENCE_ATTACKS:
        auc = row["reference_attacks"][name]["auc"]
        assert auc["low"] < 0.5 < auc["high"], (name, auc)


def test_a_single_reference_model_is_refused(memorising_run, tmp_path, capsys):
    assert cli.main(["membership", str(memorising_run), "--out", str(tmp_path / "audit"),
                     "--reference-models", "1"]) == 2
    assert "at least 2 (each record needs IN and OUT models)" in capsys.readouterr().err


def test_an_interrupted_reference_model_resumes_from_its_last_epoch_to_the_same_weights(tmp_path):
    """Reference trainings are the audit's longest step (one DP model takes about 20 minutes at full
    size), so each keeps a per-epoch checkpoint: a stop mid-training loses at most one epoch."""
    rng = np.random.default_rng(0)
    images = rng.random((24, 105, 105, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 24)
    recipe = part1.Part1Config(epochs=3, batch_size=8)
    inside = reference_models.halves(2, len(images), seed=0)

    class Stop(Exception):
        pass

    def stop_after_epoch_2(line: str) -> None:
        if line.startswith("reference model epoch 2/3"):
            raise Stop

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Stop):
        reference_models.reference_models(recipe, images, labels, inside, interrupted, seed=0, log=stop_after_epoch_2)
    assert not list(interrupted.glob("reference_*.h5"))
    lines = []
    paths = reference_models.reference_models(recipe, images, labels, inside, interrupted, seed=0, log=lines.append)
    epochs = [line for line in lines if line.startswith("reference model epoch")]
    assert [line.split()[3] for line in epochs] == ["3/3", "1/3", "2/3", "3/3"]  # model 0 resumed at its epoch 3
    assert not list((interrupted / run_folder.CHECKPOINTS).glob("*"))
    straight = reference_models.reference_models(recipe, images, labels, inside, tmp_path / "straight", seed=0,
                                                 log=lambda line: None)
    for resumed, uninterrupted in zip(paths, straight, strict=True):
        got, expected = reference_models.empty_model(recipe), reference_models.empty_model(recipe)
        got.load_weights(resumed)
        expected.load_weights(uninterrupted)
        for a, b in zip(got.get_weights(), expected.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
