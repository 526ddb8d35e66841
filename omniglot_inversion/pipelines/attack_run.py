"""One attack against one intercepted stage, run into a folder: ``omniglot-inversion attack``, and
each (target, attack) pair of ``evaluate``.

The folder gets ``reconstructions.npz`` (float32 ``originals`` and ``reconstructions``, both
(n, 105, 105, 1) in [0, 1], and ``alphabets``), ``attack.json`` (method, options, seconds,
metrics with intervals and the verdict), ``attack.png`` (the first 16 test images above their
reconstructions), ``alphabets.png`` (MSE and top-1 per alphabet) and, for a decoder the attack
trained, ``attacker_weights.h5``. Training and search keep per-epoch / per-batch checkpoints in
``checkpoints/``, so an interrupted attack resumes; a finished one is not run again, even once its
``reconstructions.npz`` is deleted (see `finished`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniglot_inversion import attacks
from omniglot_inversion.attacks import prior, whitebox
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.files import atomic_path, read_json, write_json
from omniglot_inversion.io.image_sources import Images, fit_to_stage, square_side
from omniglot_inversion.measure import plots
from omniglot_inversion.measure.assessment import TestSet, assess
from omniglot_inversion.network import training
from omniglot_inversion.network.models import AttackModel
from omniglot_inversion.network.weights import save_weights

RESULT = "attack.json"
RECONSTRUCTIONS = "reconstructions.npz"
FIGURE = "attack.png"
ALPHABET_FIGURE = "alphabets.png"
ATTACKER_WEIGHTS = "attacker_weights.h5"
CHECKPOINTS = "checkpoints"
PRIOR = "prior"  # the generator a prior attack trained: prior_encoder.h5, prior_generator.h5
CODES = "codes.npy"
NUM_SHOWN = 16
# --quick: the first images of the surrogate set and of small2
QUICK_SURROGATE_IMAGES = 256
QUICK_TEST_IMAGES = 64
# the version of what `run_attack` derives from finished reconstructions (`assess`, the figures):
# bump it when they change, so that finished attacks are scored anew instead of returned as recorded
SCORING_VERSION = 2  # 2: exact intervals for rates, Holm-adjusted verdicts, halves


# an `AttackSpec` setting left to the method's own default
OWN = "own"


@dataclass(frozen=True)
class AttackSpec:
    """Which attack, on which surrogate images, with which settings. ``epochs`` None: the
    surrogate set's default (`attacks.default_epochs`); ``surrogate_limit`` keeps the first
    images of the surrogate set (small runs); ``surrogate_source`` names the user's own images
    (`image_sources`) instead of a surrogate set of Omniglot."""

    method: str = "decoder"
    surrogate: str = "small1"
    epochs: int | None = None
    batch_size: int = 32
    iterations: int | None = None  # None: the method's own (white-box and hybrid 50, prior 200)
    tv_weight: float = whitebox.TV_WEIGHT
    learning_rate: float | None = None  # None: the method's own (white-box 0.5 on the pixels, prior 0.2)
    start: str = "mean"
    tolerance: float | None | str = OWN  # None: no plateau stop; OWN: the method's own (white-box 0.05, prior 0.01)
    seed: int = 0
    surrogate_limit: int | None = None
    surrogate_source: str | None = None

    def __post_init__(self):
        if self.method not in attacks.METHODS:
            raise UsageError(f"Unknown attack method {self.method!r}; choose one of {', '.join(attacks.METHODS)}.")
        if self.surrogate_source is None and self.surrogate not in attacks.SURROGATES:
            raise UsageError(f"Unknown surrogate set {self.surrogate!r}; choose one of "
                             f"{', '.join(attacks.SURROGATES)}.")
        if self.start not in whitebox.STARTS:
            raise UsageError(f"Unknown start image {self.start!r}; choose one of {', '.join(whitebox.STARTS)}.")
        search = prior if self.method == "prior" else whitebox
        # the method's own settings resolved here, so that attack.json records what ran
        if self.iterations is None:
            object.__setattr__(self, "iterations", search.ITERATIONS)
        if self.tolerance == OWN:
            object.__setattr__(self, "tolerance", search.PLATEAU_TOLERANCE)
        if self.iterations < 0 or self.tv_weight < 0 or (self.learning_rate is not None and not self.learning_rate > 0):
            raise UsageError("--iterations and --tv-weight must be >= 0 and --learning-rate > 0.")
        if self.tolerance is not None and not 0 <= self.tolerance < 1:
            raise UsageError(f"--plateau-tolerance must be in [0, 1), got {self.tolerance}.")

    @property
    def label(self) -> str:
        """``method`` for the post's small1, ``method:surrogate`` otherwise."""
        return self.method if self.surrogate == "small1" else f"{self.method}:{self.surrogate}"

    @property
    def decoder_epochs(self) -> int:
        return self.epochs if self.epochs is not None else attacks.default_epochs(self.surrogate)

    def record(self) -> dict:
        """The settings that determine the result (as attack.json holds them)."""
        fields = dataclasses.asdict(self)
        if self.method == "whitebox":
            for name in ("epochs", "batch_size"):
                fields.pop(name)
        else:
            fields["epochs"] = self.decoder_epochs
        if self.method == "decoder":
            for name in ("iterations", "tv_weight", "learning_rate", "start", "tolerance"):
                fields.pop(name)
        if self.method == "prior":
            for name in ("tv_weight", "start"):
                fields.pop(name)
        return fields


def parse_label(label: str, **settings) -> AttackSpec:
    """The spec of ``method`` or ``method:surrogate`` with the other ``settings``."""
    method, _, surrogate = label.partition(":")
    return AttackSpec(method=method, surrogate=surrogate or "small1", **settings)


def load_test_set(data_dir=None, *, limit: int | None = None) -> TestSet:
    """``small2`` (its first ``limit`` images), the attacker's test set."""
    images, alphabets = data.as_arrays(data.load_split("small2", data_dir, limit=limit))
    characters = data.record_labels("small2", data_dir, limit=limit)["character"]
    return TestSet(images, alphabets, characters, data.alphabet_names(data_dir))


def own_sets(own: Images, test: Images, shape: tuple, name: str, *,
             what: tuple[str, str] = ("the attacker's own images", "the test images"),
             ) -> tuple[attacks.SurrogateSet, TestSet]:
    """The attacker's own images ``own`` and the test images ``test`` (`image_sources.Images`)
    fitted to a stage's input ``shape``, as `run_attack` takes them. Classes are matched by name:
    a test class among the attacker's is "seen". Without labels on both sides no test class is
    known to be the attacker's, so every test image is "unseen"; the test labels, if any, still
    say which reconstructions show the right character. ``what`` names both in error messages."""
    own_images = fit_to_stage(own.images, shape, what[0])
    test_images = fit_to_stage(test.images, shape, what[1])
    if own.labels is not None and test.labels is not None:
        own_classes = [own.names[label] for label in own.labels]
        test_classes = [test.names[label] for label in test.labels]
        names = sorted(set(own_classes) | set(test_classes))
        own_labels = np.array([names.index(name) for name in own_classes])
        test_labels = np.array([names.index(name) for name in test_classes])
        return (attacks.SurrogateSet(name, own_images, own_labels),
                TestSet(test_images, test_labels, test_labels, names))
    characters = test.labels if test.labels is not None else np.arange(len(test_images))
    return (attacks.SurrogateSet(name, own_images, np.full(len(own_images), -1)),
            TestSet(test_images, np.zeros(len(test_images), int), np.asarray(characters), ["all"]))


def _build(spec: AttackSpec, folder: Path, pretrained: AttackModel | None, log) -> attacks.InversionAttack:
    def report(row: dict) -> None:
        log(f"decoder epoch {row['epoch']}/{spec.decoder_epochs}  train_mse {row['train_mse']:.4f}  "
            f"({row['seconds']:.1f} s)")
    decoder = attacks.DecoderAttack(epochs=spec.decoder_epochs, batch_size=spec.batch_size, seed=spec.seed,
                                    attacker=pretrained if spec.surrogate == "small1" else None,
                                    checkpoint_dir=folder / CHECKPOINTS / "decoder",
                                    on_epoch=training.logged_epochs(report, spec.decoder_epochs))
    rate = {} if spec.learning_rate is None else {"learning_rate": spec.learning_rate}
    search = dict(iterations=spec.iterations, tv_weight=spec.tv_weight, start=spec.start, tolerance=spec.tolerance,
                  **rate, checkpoint_dir=folder / CHECKPOINTS / "search", log=log)
    return attacks.build_attack(spec.method, decoder=decoder, **({} if spec.method == "decoder" else search))


OUTPUTS = (RESULT, RECONSTRUCTIONS, FIGURE, ALPHABET_FIGURE, ATTACKER_WEIGHTS)
CHECKPOINT_SPEC = "spec.json"


def prepare_folder(folder: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse a folder that holds an attack, finished or interrupted, unless ``resume`` (continue
    it from its checkpoints; a finished one is only scored again) or ``overwrite`` (its files go,
    and nothing else in the folder)."""
    if overwrite and resume:
        raise UsageError("--overwrite starts an attack again and --resume continues it; pass one of them.")
    folder = Path(folder)
    held = [name for name in (RESULT, CHECKPOINTS) if (folder / name).exists()]
    if held and not (overwrite or resume):
        raise UsageError(f"{folder} already holds an attack ({', '.join(held)}); choose another --out, pass --resume "
                         f"to continue it, or --overwrite to replace it.")
    if overwrite:
        for name in OUTPUTS:
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)


def _keep_matching_checkpoints(folder: Path, spec: AttackSpec) -> None:
    """Drop checkpoints made with other settings, then record this run's."""
    path = folder / CHECKPOINTS / CHECKPOINT_SPEC
    if read_json(path) not in (None, spec.record()):
        shutil.rmtree(folder / CHECKPOINTS)
    write_json(path, spec.record())


def finished(folder: Path, spec: AttackSpec, num_images: int) -> dict | None:
    """The recorded result in ``folder`` if it was made with ``spec`` on ``num_images`` images and
    is still of use: scored as `scored` says, or with its reconstructions kept to be scored anew.
    A scored attack needs no ``reconstructions.npz`` (tens of MB at full size), so that file can be
    deleted to save space; it is needed again only when `SCORING_VERSION` changes."""
    result = read_json(folder / RESULT)
    if result and result.get("spec") == spec.record() and result.get("num_images") == num_images \
            and (scored(folder, result) or (folder / RECONSTRUCTIONS).exists()):
        return result
    return None


def scored(folder: Path, result: dict) -> bool:
    """Whether ``result`` holds the metrics of this `SCORING_VERSION` and its figures are in ``folder``."""
    return (result.get("scoring_version") == SCORING_VERSION and "metrics" in result and "figures" in result
            and all((folder / name).exists() for name in result["figures"].values()))


def load_reconstructions(folder: Path) -> np.ndarray:
    with np.load(folder / RECONSTRUCTIONS) as saved:
        return saved["reconstructions"]


def as_pictures(images: np.ndarray) -> np.ndarray:
    """``images`` as (n, height, width, channels) for scores and figures: flat square inputs of a
    stage that takes vectors become one-channel square pictures."""
    if images.ndim == 2:
        side = square_side(images.shape[1])
        if side is None:
            raise UsageError(f"Inputs of {images.shape[1]} numbers are not square pictures; they cannot be scored "
                             "as images.")
        return images.reshape(len(images), side, side, 1)
    return images


def run_attack(target, spec: AttackSpec, test: TestSet, folder: str | os.PathLike, *, data_dir=None,
               pretrained: AttackModel | None = None, pretrained_name: str | None = None, title: str = "",
               surrogate: attacks.SurrogateSet | None = None, log=print) -> dict:
    """Run ``spec`` against ``target`` on ``test`` into ``folder`` and return the attack.json record.

    An interrupted attack resumes from its checkpoints; a finished one made with the same settings
    on the same number of images is not run again: its record is returned as it is, or, when it was
    scored by another `SCORING_VERSION` or its figures are gone, its reconstructions are scored
    anew (at full size a minute or two of bootstrap and SSIM, so not on every rerun); only when
    they must be scored anew and ``reconstructions.npz`` is gone is the attack run again.
    ``pretrained``: a decoder already trained on small1 with the post's settings (a run's
    ``attacker_weights.h5``), used instead of training one when the surrogate is small1.
    ``surrogate``: the attacker's own images when they are not a surrogate set of Omniglot
    (``spec.surrogate_source``); ``test.images`` then have the stage's input shape, and are scored
    as pictures (`as_pictures`).
    """
    folder = Path(folder)
    done = finished(folder, spec, len(test.images))
    if done is not None and scored(folder, done):
        log(f"{spec.label}: done before, kept ({folder / RESULT})")
        return done
    if surrogate is None:
        surrogate = attacks.load_surrogate(spec.surrogate, data_dir, limit=spec.surrogate_limit)
    if done is not None:
        log(f"{spec.label}: done before, scored anew ({folder / RECONSTRUCTIONS})")
        reconstructions = load_reconstructions(folder)
        run = {key: done[key] for key in ("options", "pretrained_decoder", "seconds", "search") if key in done}
    else:
        _keep_matching_checkpoints(folder, spec)
    codes = _intercepted_codes(target, test, folder, done is not None)
    if done is None:
        reconstructions, run = _invert(target, spec, codes, test, folder, surrogate, pretrained, pretrained_name, log)
    code_errors = attacks.code_error(target, reconstructions, codes, surrogate.images.mean(axis=0))
    seen = np.isin(test.alphabets, surrogate.alphabets)
    shown = min(NUM_SHOWN, len(test.images))
    pictures = dataclasses.replace(test, images=as_pictures(test.images))
    guesses = as_pictures(reconstructions)
    plots.save_reconstruction_grid(pictures.images[:shown], guesses[:shown], folder / FIGURE,
                                   title or f"{spec.label}: first {shown} test images and reconstructions")
    metrics = assess(pictures, guesses, as_pictures(surrogate.images), seen, code_errors=code_errors, seed=spec.seed)
    plots.save_alphabet_bars(metrics["per_alphabet"], {test.names[a] for a in np.unique(test.alphabets[seen])},
                             folder / ALPHABET_FIGURE, spec.label)
    result = {
        "method": spec.method, "surrogate": spec.surrogate, "label": spec.label, "spec": spec.record(),
        "defence": attacks.defence_of(target).config(), **run,
        "num_images": len(test.images), "num_surrogate_images": len(surrogate.images), "metrics": metrics,
        "figures": {"reconstructions": FIGURE, "alphabets": ALPHABET_FIGURE}, "scoring_version": SCORING_VERSION,
    }
    write_json(folder / RESULT, result)
    return result


def _intercepted_codes(target, test: TestSet, folder: Path, finished_before: bool) -> np.ndarray:
    """The codes the device sent for the test images, queried once per attack and kept with it: a
    defended device answers at random, and a resumed or rescored attack must see the same codes."""
    if finished_before:
        with np.load(folder / RECONSTRUCTIONS) as saved:
            if "codes" in saved.files:
                return saved["codes"]
    path = folder / CHECKPOINTS / CODES
    if not finished_before and path.exists():
        codes = np.load(path)
        if len(codes) == len(test.images):
            return codes
    codes = attacks.query(attacks.stage_function(target), test.images, shape=attacks.input_shape(target))
    if not finished_before:
        with atomic_path(path) as tmp:
            np.save(tmp, codes)
    return codes


def _invert(target, spec, codes, test, folder, surrogate, pretrained, pretrained_name, log) -> tuple[np.ndarray, dict]:
    """The attack itself: prepare on the surrogate images, invert the test images' ``codes``, save
    the reconstructions with the codes (and a decoder trained here); checkpoints are removed once
    all is saved."""
    attack = _build(spec, folder, pretrained, log)
    started = time.perf_counter()
    attack.prepare(target, surrogate.images)
    prepared = time.perf_counter()
    reconstructions = attack.invert(codes)
    inverted = time.perf_counter()
    with atomic_path(folder / RECONSTRUCTIONS) as tmp:
        np.savez_compressed(tmp, originals=test.images, reconstructions=reconstructions, alphabets=test.alphabets,
                            codes=codes)
    decoder = getattr(attack, "decoder", attack)
    if isinstance(decoder, attacks.DecoderAttack) and decoder.history:
        with atomic_path(folder / ATTACKER_WEIGHTS) as tmp:
            save_weights(decoder.attacker, tmp)
    if isinstance(attack, attacks.PriorAttack) and attack.trained_prior:
        attack.prior.save(folder / PRIOR)
    used_pretrained = pretrained is not None and spec.surrogate == "small1" and spec.method != "whitebox"
    run = {"options": attack.options(), "pretrained_decoder": pretrained_name if used_pretrained else None,
           **search_summary(getattr(attack, "search_log", None)),
           "seconds": {"prepare": prepared - started, "invert": inverted - prepared,
                       "invert_per_image": (inverted - prepared) / len(test.images)}}
    # the record must name the settings before the checkpoints go, so a kill in between reruns nothing
    write_json(folder / RESULT, {"spec": spec.record(), "num_images": len(test.images), **run})
    shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)
    return reconstructions, run


def search_summary(search_log: list[dict] | None) -> dict:
    """A search's steps per batch (``search``: mean, largest, per batch) for attack.json; {} for
    an attack that does not search."""
    steps = [batch["iterations"] for batch in search_log or () if batch["iterations"] is not None]
    if not steps:
        return {}
    return {"search": {"iterations_mean": float(np.mean(steps)), "iterations_max": int(max(steps)),
                       "batches": search_log}}


def summary_line(result: dict) -> str:
    """One line of an attack's headline numbers."""
    metrics = result["metrics"]
    unseen = metrics["seen_unseen"].get("unseen")
    scores = metrics["attack"]
    line = (f"{result['label']}: MSE {scores['mse']['mean']:.4f}, SSIM {scores['ssim']['mean']:.3f}, "
            f"top-1 {scores['top1']['mean']:.3f}, code error {metrics['code_error']['mean']:.3f}")
    if "search" in result:
        line += f" after {result['search']['iterations_mean']:.0f} steps"
    if unseen is not None:
        line += f"; unseen alphabets: {metrics['verdict_unseen']['text']}"
    return line
