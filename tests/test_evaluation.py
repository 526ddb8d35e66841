import numpy as np
import pytest

from omniglot_inversion.measure import evaluation


def _images(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(count, 105, 105, 1)) > 0.1).astype(np.float32)


def test_identical_images_score_perfectly():
    originals = _images(12)
    scores = evaluation.score(originals, originals.copy(), np.arange(12))
    assert scores["mse"]["mean"] == 0.0
    assert scores["psnr"]["mean"] == 100.0
    assert scores["ssim"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert scores["top1"]["mean"] == scores["top5"]["mean"] == scores["same_character"]["mean"] == 1.0


def test_one_pixel_change_has_the_expected_mse_and_psnr():
    originals = np.ones((1, 105, 105, 1), np.float32)
    changed = originals.copy()
    changed[0, 50, 50, 0] = 0.0
    mse = evaluation.per_image_mse(originals, changed)[0]
    assert mse == pytest.approx(1 / 105**2)
    assert evaluation.per_image_psnr(originals, changed)[0] == pytest.approx(10 * np.log10(105**2))
    assert evaluation.per_image_ssim(originals, changed)[0] < 1.0


def test_reconstructions_are_clipped_before_scoring():
    originals = np.ones((2, 105, 105, 1), np.float32)
    assert evaluation.per_image_mse(originals, originals * 3.0).max() == 0.0


def test_shuffled_reconstructions_are_not_reidentified():
    originals = _images(20, seed=1)
    order = np.roll(np.arange(20), 1)  # every reconstruction is another image, exactly
    hits = evaluation.reidentification(originals, originals[order], np.arange(20))
    assert not hits["top1"].any() and not hits["same_character"].any()
    # with characters shared pairwise, the shifted copy finds the same character half of the time
    characters = np.arange(20) // 2
    assert evaluation.reidentification(originals, originals[order], characters)["same_character"].mean() == 0.5


def test_top5_counts_near_misses_and_ties_count_against_the_attacker():
    originals = _images(10, seed=2)
    constant = np.broadcast_to(originals.mean(axis=0), originals.shape)
    hits = evaluation.reidentification(originals, constant, np.arange(10))
    # one guess for all: at most one image can be strictly nearest, none is when distances tie
    assert hits["top1"].sum() <= 1 and hits["top5"].sum() <= 5


def test_a_tie_with_the_own_original_counts_against_the_attacker():
    originals = np.ones((4, 105, 105, 1), np.float32)
    originals[0, :10] = 0.0
    originals[1, :10] = 0.0  # images 0 and 1 are the same drawing
    originals[2, 50:60] = 0.0
    originals[3, 90:] = 0.0
    hits = evaluation.reidentification(originals, originals.copy(), np.arange(4))
    # exact copies: 2 and 3 are first; 0 and 1 tie with each other, so neither is counted first
    assert hits["top1"].tolist() == [False, False, True, True]
    assert hits["top5"].all()


def test_chance_levels():
    chance = evaluation.chance_levels(np.array([0, 0, 1, 1, 1, 2, 3, 4, 5, 6]))
    assert chance["top1"] == 0.1 and chance["top5"] == 0.5
    assert chance["same_character"] == pytest.approx((2 * 2 + 3 * 3 + 5 * 1) / 10 / 10)


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(3)
    small = evaluation.bootstrap(rng.normal(size=50))
    large = evaluation.bootstrap(rng.normal(size=5000))
    assert small.low <= small.mean <= small.high
    assert (large.high - large.low) < (small.high - small.low) / 5
    assert evaluation.bootstrap(np.ones(30)).as_dict() == {"mean": 1.0, "low": 1.0, "high": 1.0}


def test_baselines_and_gain_over_the_best():
    originals = _images(16, seed=4)
    attacker_images = _images(40, seed=5)
    guesses = evaluation.baselines(originals, attacker_images, originals[::-1])
    assert set(guesses) == {"mean_training_image", "all_paper", "shuffled_codes"}
    np.testing.assert_allclose(guesses["mean_training_image"][3], attacker_images.mean(axis=0))
    assert guesses["all_paper"].min() == 1.0
    characters = np.arange(16)
    baseline_scores = {name: evaluation.score(originals, image, characters) for name, image in guesses.items()}
    perfect = evaluation.score(originals, originals, characters)
    gains = evaluation.gain_over_best_baseline(perfect, baseline_scores)
    best_mse = min(scores["mse"]["mean"] for scores in baseline_scores.values())
    assert gains["mse"]["gain"] == pytest.approx(best_mse) and gains["mse"]["gain"] > 0
    assert gains["top1"]["gain"] > 0


def test_groups_are_summarised_separately():
    originals = _images(8, seed=6)
    reconstructions = originals.copy()
    reconstructions[4:] = 1.0  # the second group is reconstructed as blank paper
    per_image = evaluation.per_image_scores(originals, reconstructions, np.arange(8))
    groups = evaluation.by_group(per_image, np.array(["seen"] * 4 + ["unseen"] * 4))
    assert groups["seen"]["mse"]["mean"] == 0.0 and groups["unseen"]["mse"]["mean"] > 0.05
    assert groups["seen"]["top1"]["mean"] == 1.0


def test_distances_of_one_guess_for_all_equal_the_full_computation():
    originals = _images(6, seed=7)
    guess = np.broadcast_to(originals.mean(axis=0), originals.shape)
    table = evaluation.distances(originals, guess)
    by_hand = np.array([[np.sum((guess[i].astype(np.float64) - originals[j]) ** 2) for j in range(6)]
                        for i in range(6)])
    np.testing.assert_allclose(table, by_hand, rtol=1e-9)
