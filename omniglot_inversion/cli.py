"""``omniglot-inversion``: the post's steps and the suite's experiments as subcommands.

Each command is declared once, in `COMMANDS`: its help, its handler and its options. Options that
several commands share are declared once, in `SHARED`, and a command that words one differently
says only what differs (`Option.but`). Handlers parse nothing: they turn the parsed options into a
pipeline's configuration, call it and print where it wrote.

Importing this module imports no TensorFlow (the pipelines are imported by the handlers), so that
``--help`` is instant and TensorFlow's C++ start-up lines stay off unless the user set
``TF_CPP_MIN_LOG_LEVEL``. The choices and defaults below that come from modules which need
TensorFlow are therefore written here; tests/test_cli.py checks them against those modules.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path

_QUIET = "TF_CPP_MIN_LOG_LEVEL" not in os.environ  # a user who set it sees what TensorFlow says
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from omniglot_inversion import interrupts  # noqa: E402
from omniglot_inversion.errors import UsageError  # noqa: E402
from omniglot_inversion.io.files import folder_lock  # noqa: E402

# From modules that import TensorFlow (checked by tests/test_cli.py)
METHODS = ("decoder", "whitebox", "hybrid", "prior")  # attacks.METHODS
SURROGATES = ("small1", "background")  # attacks.SURROGATES
DEFENCES = ("none", "gaussian", "laplace", "dropout", "nopeek", "nopeek+laplace")  # defences.DEFENCES
DEFAULT_ATTACKS = ("decoder", "decoder:background", "whitebox", "hybrid", "prior")  # attack_suite.DEFAULT_ATTACKS
ENGINES = ("fast", "optimizer")  # dp.engines.CLI_ENGINES
SAMPLINGS = ("poisson", "shuffle")  # dp.sampling.SAMPLINGS
CLASS_INVERSIONS = ("mi-face", "gmi")  # attacks.class_inversion.METHODS
# attacks.whitebox
WHITEBOX = dict(iterations=50, tv_weight=1.0, learning_rate=0.5, tolerance=0.05, window=5, starts=("mean", "paper"))
PRIOR = dict(iterations=200, learning_rate=0.2, tolerance=0.01, window=25)  # attacks.prior


def _number(kind: type, test: Callable, wording: str) -> Callable[[str], int | float]:
    """An argparse type: ``kind`` of the text, refused with ``wording`` unless ``test`` holds."""
    def parse(text: str):
        value = kind(text)
        if not test(value):
            raise argparse.ArgumentTypeError(f"{wording}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


_positive_int = _number(int, lambda value: value >= 1, "must be at least 1")
_non_negative_int = _number(int, lambda value: value >= 0, "must be at least 0")
_positive_float = _number(float, lambda value: value > 0, "must be positive")
_non_negative_float = _number(float, lambda value: value >= 0, "must be at least 0")


@dataclass(frozen=True)
class Option:
    """One command-line option: the flags and keyword arguments of `add_argument`."""

    flags: tuple[str, ...]
    settings: dict = _field(default_factory=dict)

    def but(self, **changes) -> Option:
        """This option with some settings changed (another help text, not required, ...)."""
        return dataclasses.replace(self, settings={**self.settings, **changes})

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, **self.settings)


def option(*flags: str, **settings) -> Option:
    return Option(flags, settings)


_DATA_DIR = "folder with the four Omniglot archives (default: $OMNIGLOT_DIR, else download through tfds)"

# The options several commands share, each declared once.
SHARED = {
    "out": option("--out", required=True, type=Path, help="run folder (created if missing)"),
    "data-dir": option("--data-dir", help=_DATA_DIR),
    "seed": option("--seed", type=int, default=0, help="random seed (default 0)"),
    "quick": option("--quick", action="store_true", help="small sizes for a smoke run (about a minute)"),
    "targets": option("--targets", nargs="+", default=[], metavar="LABEL",
                      help="only the targets of these labels, e.g. 'noise 0.5' (default: every target found)"),
    "overwrite": option("--overwrite", action="store_true", help="replace a run already in --out"),
    "resume": option("--resume", action="store_true",
                     help="continue an interrupted run in --out (same options): completed steps are kept, an "
                     "interrupted training continues from its last finished epoch"),
    "jobs": option("--jobs", type=_positive_int, default=1, help="trainings at once (default 1)"),
    "ship": option("--ship", type=Path, metavar="FOLDER",
                   help="then copy the results into FOLDER (e.g. saved_models) and list them in its manifest.json"),
    "limit": option("--limit", type=_positive_int, help="first N small2 images only (smoke runs)"),
    "attacker-epochs": option("--attacker-epochs", type=_positive_int, help="attacker epochs (post: 100)"),
    "batch-size": option("--batch-size", type=_positive_int, help="batch size (post: 32)"),
}
RUN_FOLDER = (SHARED["overwrite"], SHARED["resume"])
_QUICK_ATTACK = SHARED["quick"].but(help="small sizes: 256 surrogate images, 64 test images")

PART1 = (
    SHARED["out"], SHARED["data-dir"], SHARED["seed"], SHARED["quick"], SHARED["attacker-epochs"],
    SHARED["batch-size"],
    option("--epochs", type=_positive_int, help="target epochs (post: 10)"),
    option("--keras-training-mode", action="store_true",
           help="call the target with training=True while training (batch norm on batch statistics, dropout on); "
           "the post's loop runs it in inference mode"),
)
DEFENCE = (
    option("--defence", choices=DEFENCES, default="none",
           help="defence at the cut while the target trains and after: gaussian or laplace noise on the code, "
           "dropout on the code at inference too, nopeek (distance-correlation penalty), nopeek+laplace (NoPeek "
           "with Laplacian noise of relative scale 0.5) (default: none)"),
    option("--strength", type=float,
           help="the defence's strength: noise standard deviation relative to the code's (0-10], dropout rate "
           "(0-0.95], NoPeek weight (0-100]"),
)
WHITEBOX_SEARCH = (
    option("--iterations", type=_non_negative_int,
           help=f"white-box / hybrid / prior: at most this many Adam steps of the search (default "
           f"{WHITEBOX['iterations']}, prior {PRIOR['iterations']})"),
    option("--plateau-tolerance", type=_non_negative_float,
           help=f"white-box / hybrid / prior: stop a batch's search once {WHITEBOX['window']} steps "
           f"({PRIOR['window']} for the prior) lower its loss by less than this share of it (default "
           f"{WHITEBOX['tolerance']}, prior {PRIOR['tolerance']}; 0: only once they do not lower it at all)"),
    option("--tv-weight", type=_non_negative_float, default=WHITEBOX["tv_weight"],
           help=f"white-box / hybrid: weight of the total-variation prior (default {WHITEBOX['tv_weight']})"),
    option("--learning-rate", type=_positive_float,
           help=f"white-box / hybrid / prior: Adam learning rate of the search (default {WHITEBOX['learning_rate']} "
           f"on the pixels, {PRIOR['learning_rate']} on the prior's latents)"),
    option("--start", choices=WHITEBOX["starts"], default="mean",
           help="white-box: start image, the mean surrogate image (default) or blank paper"),
)
PART2 = (
    SHARED["out"], SHARED["data-dir"], SHARED["seed"], SHARED["quick"], SHARED["attacker-epochs"],
    SHARED["batch-size"],
    option("--noise", type=float, nargs="+", help="noise multipliers (post: 0.7 0.5 0.3)"),
    option("--engine", choices=ENGINES, default="fast",
           help="DP engine: 'fast' (per-example clip factors from batch passes, clipped sum through the batch "
           "statistics, their derivatives estimated from a few examples; default) or 'optimizer' (TensorFlow "
           "Privacy's DPKerasAdamOptimizer with model.fit, as the post; ~40x a plain step)"),
    option("--sampling", choices=SAMPLINGS,
           help="how each step's examples are drawn: 'poisson' (each record with probability batch size / n, the "
           "sampling the accountant assumes; default for engine fast) or 'shuffle' (the post's shuffled fixed-size "
           "batches, the only one of engine optimizer; its guarantee has no amplification by sampling)"),
    option("--reproducible-noise", action="store_true",
           help="draw the DP noise (and the Poisson sample) from the seed instead of a secret key (anyone who knows "
           "the seed can then "
           "remove it: for engine comparisons and tests only)"),
    option("--strict", action="store_true",
           help="strict variant: group instead of batch normalisation (no statistics shared between examples)"),
    option("--clip", type=_positive_float, help="l2 norm clip (post: 1.0)"),
    option("--learning-rate", type=_positive_float, help="Adam learning rate (post: 0.005)"),
    option("--microbatches", type=_positive_int, help="microbatches per batch (post: batch size)"),
    option("--epochs", type=_positive_int, help="DP epochs (post: 20)"),
    option("--steps-per-epoch", type=_positive_int, help="steps per epoch (post: ceil(13180 / 32))"),
    option("--delta", type=_positive_float, help="delta for epsilon (post: 1e-5)"),
    SHARED["jobs"].but(help="noise levels trained at once, each in its own process with (cores / jobs) threads "
                       "(default 1; on a 2-core CPU, --jobs 3 runs the post's three levels about 1.2x faster)"),
    *RUN_FOLDER,
)
EPSILON = (
    option("--noise", type=_positive_float, nargs="+", default=[0.7, 0.5, 0.3],
           help="noise multipliers (default: the post's 0.7 0.5 0.3)"),
    option("--n", type=_positive_int, default=13_180, help="training set size (post: 13180)"),
    SHARED["batch-size"].but(default=32, help="batch size (default 32)"),
    option("--epochs", type=_positive_float, default=20, help="epochs (default 20)"),
    option("--delta", type=_positive_float, default=1e-5, help="delta (default 1e-5)"),
    option("--steps", type=_positive_int,
           help="with --sampling: the steps the training took (default: ceil(epochs * n / batch size))"),
    option("--sampling", choices=SAMPLINGS,
           help="also print the guarantee of a training that drew its batches this way from n records: both "
           "accountants, Poisson and each record once per pass, and which one holds"),
    SHARED["out"].but(required=False, help="folder to write epsilon.json and epsilon.csv into"),
    option("--statement", action="store_true",
           help="also print TensorFlow Privacy's full privacy statement per noise level"),
)
ATTACK = (
    option("--intercepted", required=True, type=Path,
           help="the on-device stage: the post's (HDF5), or any Keras HDF5 / .keras model of built-in layers"),
    SHARED["out"].but(help="folder for attack.json, reconstructions.npz, attack.png"),
    option("--method", choices=METHODS, default="decoder",
           help="decoder (the post's inverse network), whitebox (search for the image with the intercepted code), "
           "hybrid (the search started from the decoder's guess) or prior (the search in the latent space of a "
           "generator trained on the attacker's own images, from the decoder's guess)"),
    option("--surrogate", choices=SURROGATES, default="small1",
           help="the attacker's own images: small1 (the post) or background (the 30 background alphabets without "
           "small2's, so every test alphabet is unseen)"),
    option("--surrogate-images", metavar="SRC",
           help="the attacker's own images for a stage of any shape: a folder of image files (subfolders as "
           "labels), an .npz with 'images' (and 'labels'), or tfds:NAME[:SPLIT]; with --test-images"),
    option("--test-images", metavar="SRC", help="the images whose codes are inverted (same kinds of source)"),
    SHARED["limit"].but(help="invert the first N test images (default: all; small2 has 3,120)"),
    SHARED["data-dir"], SHARED["seed"], _QUICK_ATTACK,
    SHARED["attacker-epochs"].but(help="decoder epochs (default: 100 on small1 as the post, 20 on background)"),
    *WHITEBOX_SEARCH, *RUN_FOLDER,
)
EVALUATE = (
    option("runs", nargs="+", type=Path, help="run folders (Part 1, Part 2) or a shipped-models folder"),
    SHARED["out"].but(required=False, help="folder for evaluation.json, figures, report.md (default: first run)"),
    option("--attacks", nargs="+", default=list(DEFAULT_ATTACKS), metavar="METHOD[:SURROGATE]",
           help=f"attacks to run, a method of {', '.join(METHODS)} with an optional surrogate set "
           f"({', '.join(SURROGATES)}; default small1) (default: {' '.join(DEFAULT_ATTACKS)})"),
    SHARED["data-dir"],
    option("--disjoint", action="store_true",
           help="test only on small2's alphabets that small1 lacks (no image the attacker trained on)"),
    SHARED["limit"],
    SHARED["targets"],
    _QUICK_ATTACK,
    SHARED["attacker-epochs"].but(help="epochs of decoders trained here (default: 100 on small1, 20 on background)"),
    SHARED["seed"].but(help="seed of the attacks, the bootstrap and the shuffled baseline"),
    SHARED["ship"].but(help="then copy the evaluation into FOLDER/attack_suite (e.g. saved_models), replacing the "
                       "rows of the targets evaluated here, and name its command in FOLDER/manifest.json"),
    *WHITEBOX_SEARCH,
)
FRONTIER = (
    SHARED["out"].but(help="sweep folder (a killed sweep resumes from it)"),
    SHARED["quick"].but(help="Part 1's small sizes, 64 test images, 20 for the white-box"),
    SHARED["jobs"].but(help="grid points trained at once (default 1)"),
    option("--dp-run", type=Path, help="a Part 2 run folder or saved_models/: its DP targets join the table"),
    option("--grid", nargs="+", metavar="DEFENCE[:STRENGTH]",
           help="grid points instead of the default grid (none, and three strengths of each defence), e.g. none "
           "laplace:0.5 dropout:0.3"),
    SHARED["data-dir"],
    SHARED["seed"].but(help="seed of the targets and the attacks (default 0)"),
    SHARED["ship"].but(help="once the sweep is finished, copy its results and defended stages into FOLDER (e.g. "
                       "saved_models) and list them in its manifest.json"),
)
SPLIT_MLP = (
    SHARED["out"].but(help="run folder (a killed run resumes from it)"),
    option("--data", choices=("digits", "mnist"), default="digits",
           help="digits: scikit-learn's bundled digits, Omniglot's background alphabets as the attacker's images "
           "(offline, default); mnist: MNIST with EMNIST letters (online, tfds)"),
    SHARED["quick"].but(help="small sizes: 2 epochs, 256 attacker's images, 40 test images"),
    SHARED["data-dir"],
    SHARED["seed"].but(help="seed of the target and the attacks (default 0)"),
)
REPRODUCE = (
    SHARED["out"].but(help="folder of the whole run (a killed run resumes from it)"),
    SHARED["jobs"].but(help="noise levels and grid points at once (default 1)"),
    SHARED["quick"].but(help="every step at its small sizes (a smoke run)"),
    SHARED["data-dir"],
    SHARED["seed"].but(help="seed of every step (default 0)"),
    SHARED["ship"].but(help="then copy the complete targets, stages, attackers and frontier into FOLDER (e.g. "
                       "saved_models) with its manifest.json"),
)
REPORT = (option("folder", type=Path, help="a folder made by omniglot-inversion reproduce"),)
REPLICATES = (
    option("folders", nargs="+", type=Path,
           help="the evaluate (or reproduce) folders of two or more training seeds, e.g. reproduce --seed 0, 1, 2"),
    SHARED["out"].but(help="folder for replicates.json and replicates.md"),
    SHARED["seed"].but(help="seed of the bootstrap"),
)
README_TABLES = (
    option("files", type=Path, nargs="*", default=[],
           help="the Markdown files whose generated blocks to rewrite (default: every file with generated blocks "
                "under --root: README.md, the docs' and saved_models/attack_suite/report.md)"),
    option("--root", type=Path, default=None,
           help="the folder that holds saved_models/ and docs/results/ (default: each file's own folder)"),
    option("--check", action="store_true", help="change nothing; exit 2 if a block differs from its rendering"),
)
CANARIES = (
    SHARED["out"].but(help="run folder for metrics.json (the audit in its 'audit' section)"),
    SHARED["data-dir"], SHARED["seed"].but(help="seed of the canaries, their inclusion and the training"),
    SHARED["quick"],
    option("--canaries", type=_positive_int, help="canaries, each included with probability 1/2 (default 1000)"),
    option("--guesses", type=_positive_int,
           help="guesses, half 'included' (lowest losses) and half 'excluded' (highest), fixed in advance "
           "(default 200)"),
    option("--noise", type=_positive_float, help="DP-SGD noise multiplier of the target (default 0.7)"),
    option("--non-private", action="store_true", help="train the target without DP (Part 1's recipe) instead"),
    option("--sampling", choices=SAMPLINGS, help="DP sampling, as part2 (default poisson)"),
    option("--epochs", type=_positive_int, help="epochs (default: the recipe's, Part 1 10, Part 2 20)"),
    option("--steps-per-epoch", type=_positive_int, help="DP steps per epoch (default: the post's 412)"),
    option("--reproducible-noise", action="store_true", help="DP noise from the seed (tests only)"),
    *RUN_FOLDER,
)
MEMBERSHIP = (
    option("runs", nargs="+", type=Path, help="run folders (Part 1 and/or Part 2)"),
    SHARED["out"].but(help="folder for membership.json and membership_roc.png"),
    SHARED["data-dir"],
    SHARED["limit"].but(help="at most N members and N non-members (smoke runs)"),
    SHARED["seed"].but(help="seed of the member sample, the reference models' halves and the bootstrap"),
    SHARED["targets"],
    option("--reference-models", type=int, default=0,
           help="also LiRA and RMIA (online and offline) against this many reference models, each trained as its "
           "target was on a random half of the target's population (0: the loss threshold only; each costs a "
           "target's training)"),
)


def _part1_config(args: argparse.Namespace):
    from omniglot_inversion.pipelines.part1 import QUICK, Part1Config

    values = dict(QUICK) if args.quick else {}
    for field in ("epochs", "attacker_epochs", "batch_size"):
        if getattr(args, field, None) is not None:
            values[field] = getattr(args, field)
    return Part1Config(seed=args.seed, keras_training_mode=getattr(args, "keras_training_mode", False),
                       defence=getattr(args, "defence", "none"), strength=getattr(args, "strength", None),
                       data_dir=args.data_dir, **values)


def _run_part1_step(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines import part1, run_folder

    config = _part1_config(args)
    if args.command == "part1":
        part1.run_part1(config, args.out, overwrite=args.overwrite, resume=args.resume)
        print(f"Part 1 done: {args.out / run_folder.METRICS}")
        return
    if args.command == "train-target":
        out = run_folder.prepare_run_folder(args.out, config, overwrite=args.overwrite, resume=args.resume)
        with run_folder.recorded_state(out):
            if "target" in run_folder.done_steps(out):
                print("target: done before, kept")
            else:
                part1.train_target_step(config, out)
        return
    step = {"train-attacker": part1.train_attacker_step, "reconstruct": part1.reconstruct_step}[args.command]
    step(config, args.out)


def _run_part2(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines import part2

    values = dict(part2.QUICK) if args.quick else {}
    names = {"noise": "noise_multipliers", "clip": "l2_norm_clip", "learning_rate": "learning_rate",
             "microbatches": "num_microbatches", "epochs": "epochs", "steps_per_epoch": "steps_per_epoch",
             "delta": "delta", "attacker_epochs": "attacker_epochs", "batch_size": "batch_size"}
    for flag, field in names.items():
        value = getattr(args, flag)
        if value is not None:
            values[field] = tuple(value) if flag == "noise" else value
    config = part2.Part2Config(seed=args.seed, data_dir=args.data_dir, engine=args.engine, sampling=args.sampling,
                               normalization="group" if args.strict else "batch",
                               reproducible_noise=args.reproducible_noise, **values)
    part2.run_part2(config, args.out, overwrite=args.overwrite, resume=args.resume, jobs=args.jobs)
    print(f"Part 2 done: {args.out / 'metrics.json'}")


def _run_epsilon(args: argparse.Namespace) -> None:
    from omniglot_inversion.dp import accounting
    from omniglot_inversion.pipelines.part2 import write_epsilon_table

    rows = accounting.epsilon_table(args.noise, n=args.n, batch_size=args.batch_size, epochs=args.epochs,
                                    delta=args.delta)
    print(accounting.format_table(rows))
    print(accounting.POISSON_CAVEAT)
    if args.sampling is not None:
        steps = args.steps or accounting.steps_for(args.n, args.batch_size, args.epochs)
        for noise in args.noise:
            account = accounting.training_guarantee(args.n, args.batch_size, noise, steps, args.delta, args.sampling)
            print(f"noise {noise:g}, {args.sampling} sampling of {args.n} records, {steps} steps: epsilon "
                  f"{account['epsilon']:.2f} (Poisson accountant {account['epsilon_poisson']:.2f}, each record once "
                  f"per pass over {account['passes']} passes {account['epsilon_once_per_pass']:.2f})")
    elif args.steps is not None:
        raise UsageError("--steps goes with --sampling (the table counts steps from --epochs, as the post's call).")
    if args.statement:
        for noise in args.noise:
            print(accounting.statement(args.n, args.batch_size, args.epochs, noise, args.delta))
    if args.out is not None:
        write_epsilon_table(rows, args.out)
        print(f"written: {args.out / 'epsilon.json'}, {args.out / 'epsilon.csv'}")


def _attack_settings(args: argparse.Namespace) -> dict:
    """The `attack_run.AttackSpec` fields that `attack` and `evaluate` take from their options."""
    from omniglot_inversion.pipelines.attack_run import QUICK_SURROGATE_IMAGES

    tolerance = {} if args.plateau_tolerance is None else {"tolerance": args.plateau_tolerance}  # else the method's
    return dict(epochs=args.attacker_epochs, iterations=args.iterations, tv_weight=args.tv_weight,
                learning_rate=args.learning_rate, start=args.start, seed=args.seed,
                surrogate_limit=QUICK_SURROGATE_IMAGES if args.quick else None, **tolerance)


def _test_limit(args: argparse.Namespace) -> int | None:
    from omniglot_inversion.pipelines.attack_run import QUICK_TEST_IMAGES

    return args.limit or (QUICK_TEST_IMAGES if args.quick else None)


def _own_images(args: argparse.Namespace, stage):
    """The attacker's own images and the test set from ``--surrogate-images`` / ``--test-images``,
    fitted to ``stage``'s input (`attack_run.own_sets`)."""
    from omniglot_inversion import attacks
    from omniglot_inversion.io import image_sources
    from omniglot_inversion.pipelines import attack_run

    if not (args.surrogate_images and args.test_images):
        raise UsageError("--surrogate-images and --test-images go together: the attacker's own images, and the "
                         "images whose codes it inverts.")
    own = image_sources.load_images(args.surrogate_images, limit=_attack_settings(args)["surrogate_limit"])
    test = image_sources.load_images(args.test_images, limit=_test_limit(args))
    return attack_run.own_sets(own, test, attacks.input_shape(stage), str(args.surrogate_images),
                              what=("--surrogate-images", "--test-images"))


def _run_attack(args: argparse.Namespace) -> None:
    from omniglot_inversion.io import data
    from omniglot_inversion.network.user_stage import load_stage
    from omniglot_inversion.pipelines import attack_run

    own_source = args.surrogate_images or args.test_images
    spec = attack_run.AttackSpec(method=args.method, surrogate=args.surrogate, **_attack_settings(args),
                                 surrogate_source=str(args.surrogate_images) if own_source else None)
    target = load_stage(args.intercepted)
    if own_source:
        surrogate, test = _own_images(args, target)
        attack_run.prepare_folder(args.out, overwrite=args.overwrite, resume=args.resume)
    else:
        data.check_data_source(args.data_dir)
        attack_run.prepare_folder(args.out, overwrite=args.overwrite, resume=args.resume)
        surrogate, test = None, attack_run.load_test_set(args.data_dir, limit=_test_limit(args))
    result = attack_run.run_attack(target, spec, test, args.out, data_dir=args.data_dir, surrogate=surrogate,
                                   title=f"{spec.label} attack on {args.intercepted.name}")
    print(attack_run.summary_line(result))
    print(f"written: {args.out / attack_run.RESULT}, {args.out / attack_run.RECONSTRUCTIONS}, "
          f"{args.out / attack_run.FIGURE}")


def _run_evaluate(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines import attack_run
    from omniglot_inversion.pipelines.attack_suite import EVALUATION, REPORT, evaluate_runs

    for label in args.attacks:
        attack_run.parse_label(label)  # refuse an unknown attack before anything runs
    out = args.out or args.runs[0]
    evaluate_runs(args.runs, out, data_dir=args.data_dir, attacks=tuple(args.attacks), settings=_attack_settings(args),
                  disjoint=args.disjoint, limit=_test_limit(args), only=tuple(args.targets))
    print(f"written: {Path(out) / EVALUATION}, {Path(out) / REPORT} and figures")
    if args.ship is not None:
        from omniglot_inversion.pipelines.shipping import ATTACK_SUITE, export_attack_suite

        export_attack_suite(out, args.ship, shlex.join(["omniglot-inversion", *args.argv]))
        print(f"shipped into {args.ship / ATTACK_SUITE}: {EVALUATION}, {REPORT} and figures")


def _run_frontier(args: argparse.Namespace) -> None:
    from omniglot_inversion.io import data
    from omniglot_inversion.pipelines import frontier

    grid = tuple(frontier.parse_point(text) for text in args.grid) if args.grid else frontier.DEFAULT_GRID
    config = frontier.FrontierConfig(grid=grid, quick=args.quick, seed=args.seed, data_dir=args.data_dir)
    data.check_data_source(args.data_dir)
    frontier.run_frontier(config, args.out, jobs=args.jobs, dp_run=args.dp_run)
    print(f"written: {args.out / frontier.RESULT}, {args.out / frontier.TABLE}, {args.out / frontier.FIGURE}")
    if args.ship is not None:
        from omniglot_inversion.pipelines.run_folder import MANIFEST
        from omniglot_inversion.pipelines.shipping import export_frontier

        export_frontier(args.out, args.ship, frontier.command(config, args.out, args.dp_run))
        print(f"shipped into {args.ship}: {frontier.RESULT}, {frontier.FIGURE}, the defended stages, {MANIFEST}")


def _run_split_mlp(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines.split_mlp import REPORT, RESULT, SplitMLPConfig, run_split_mlp

    settings = dict(source=args.data, seed=args.seed, data_dir=args.data_dir)
    config = SplitMLPConfig.quick(**settings) if args.quick else SplitMLPConfig(**settings)
    run_split_mlp(config, args.out)
    print(f"written: {args.out / RESULT}, {args.out / REPORT}")


def _run_reproduce(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines.reproduce import ReproduceConfig, run_reproduce

    run_reproduce(ReproduceConfig(quick=args.quick, seed=args.seed, data_dir=args.data_dir), args.out, jobs=args.jobs,
                  ship_to=args.ship)


INVERT_CLASSES = (
    option("runs", nargs="+", type=Path, help="run folders (Part 1 and/or Part 2) or a shipped-models folder"),
    SHARED["out"].but(help="folder for class_inversion.json, its figures, the evaluator and the prior"),
    option("--methods", nargs="+", choices=CLASS_INVERSIONS, default=list(CLASS_INVERSIONS),
           help="mi-face (gradient descent on the image with a smoothness prior) and/or gmi (search in a "
           "generator trained on the background alphabets, LOMMA's logit loss) (default: both)"),
    option("--per-class", type=_positive_int, help="reconstructions per class (default 5)"),
    option("--iterations", type=_positive_int, help="Adam steps of each search (default 300)"),
    SHARED["data-dir"], SHARED["targets"],
    SHARED["quick"].but(help="small sizes: 2 per class, 10 steps, evaluator and generator trained 1 epoch on "
                        "512 and 256 images"),
    SHARED["seed"].but(help="seed of the starts, the evaluator, the generator and the bootstrap"),
)


def _run_invert_classes(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines import class_inversion_run

    values = dict(class_inversion_run.QUICK) if args.quick else {}
    for flag in ("per_class", "iterations"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    config = class_inversion_run.ClassInversionConfig(methods=tuple(args.methods), seed=args.seed, **values)
    class_inversion_run.run_class_inversion(args.runs, args.out, config, data_dir=args.data_dir,
                                            only=tuple(args.targets))
    print(f"written: {args.out / class_inversion_run.RESULT}")


def _run_replicates(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines import replicates

    replicates.run_replicates(args.folders, args.out, seed=args.seed)
    print(f"written: {args.out / replicates.RESULT}, {args.out / replicates.REPORT}")


def _run_readme(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines import readme_tables

    if not args.files:
        args.root = args.root or Path(".")
        args.files = [args.root / name for name in readme_tables.GENERATED]
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        raise UsageError(f"{', '.join(missing)}: not a file; give the Markdown files whose tables to render.")
    if args.check:
        stale = [str(path) for path in args.files if readme_tables.render(path, args.root) != path.read_text()]
        if stale:
            root = "" if args.root is None else f" --root {args.root}"
            raise UsageError(f"{', '.join(stale)}: generated tables differ from the files they come from; run "
                             f"`omniglot-inversion readme {' '.join(stale)}{root}` to rewrite them.")
        print(f"{', '.join(map(str, args.files))}: every generated table equals its rendering")
        return
    for path in args.files:
        print(f"{'rewritten' if readme_tables.update(path, args.root) else 'unchanged'}: {path}")


def _run_report(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines.report import write_report

    print(f"written: {write_report(args.folder)}")


def _run_canaries(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines import canary_audit

    values = dict(canary_audit.QUICK) if args.quick else {}
    for flag in ("canaries", "guesses", "sampling", "epochs", "steps_per_epoch"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    if args.non_private and (args.noise is not None or args.sampling is not None):
        raise UsageError("--non-private trains without DP: leave out --noise and --sampling.")
    if args.noise is not None:
        values["noise_multiplier"] = args.noise
    elif args.non_private:
        values["noise_multiplier"] = None
    config = canary_audit.CanaryConfig(seed=args.seed, data_dir=args.data_dir,
                                       reproducible_noise=args.reproducible_noise, **values)
    canary_audit.run_canaries(config, args.out, overwrite=args.overwrite, resume=args.resume)
    print(f"Canary audit done: {args.out / 'metrics.json'}")


def _run_membership(args: argparse.Namespace) -> None:
    from omniglot_inversion.pipelines.membership_audit import FIGURE, RESULT, run_membership

    run_membership(args.runs, args.out, data_dir=args.data_dir, seed=args.seed, limit=args.limit,
                   reference_count=args.reference_models, only=tuple(args.targets))
    print(f"written: {args.out / RESULT}, {args.out / FIGURE}")


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one line of help, what runs it and the options it takes."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], None]
    options: tuple[Option, ...]


COMMANDS = (
    Command("part1", "Part 1 end to end: train the target, train the attacker, reconstruct small2",
            _run_part1_step, PART1 + RUN_FOLDER + DEFENCE),
    Command("train-target", "train the split target model (10 epochs) into a run folder",
            _run_part1_step, PART1 + RUN_FOLDER + DEFENCE),
    Command("train-attacker", "train an attacker against the run folder's target (100 epochs on small1)",
            _run_part1_step, PART1),
    Command("reconstruct", "reconstruct small2 with the run folder's attacker; figure and test MSE",
            _run_part1_step, PART1),
    Command("part2", "Part 2 end to end: DP-trained targets per noise level, epsilon table, interception, attacks",
            _run_part2, PART2),
    Command("epsilon", "epsilon table of DP-SGD: TensorFlow Privacy 0.9.0 and the post's 2020 accounting side by side",
            _run_epsilon, EPSILON),
    Command("attack", "invert small2's codes through an intercepted on-device stage (Keras HDF5): the post's "
            "decoder, He et al.'s white-box search, or both", _run_attack, ATTACK),
    Command("evaluate", "every attack against every target in Part 1 / Part 2 run folders or saved_models/: "
            "metrics, baselines, seen and unseen alphabets, verdicts, report", _run_evaluate, EVALUATE),
    Command("frontier", "the target trained under each defence at the cut (noise, dropout, NoPeek) and strength, "
            "DP-SGD's targets beside them, each attacked: accuracy against leakage in frontier.json, .csv and .png",
            _run_frontier, FRONTIER),
    Command("split-mlp", "the lecture's split MLP (784-500 on the device, 500-500-10 on the server) trained on "
            "digits, its 500-number code attacked by every method with an attacker's own handwriting of another "
            "kind", _run_split_mlp, SPLIT_MLP),
    Command("reproduce", "the whole post and the suite in one folder: Part 1, Part 2 at the three noise levels, "
            "every attack, the defences' frontier, the membership audit, the split MLP, then report.md (resumable)",
            _run_reproduce, REPRODUCE),
    Command("report", "rewrite FOLDER/report.md and its figures from the JSON files of a reproduce folder",
            _run_report, REPORT),
    Command("replicates", "the attack suite's rates over training seeds: mean, per-seed values and an interval "
            "over seeds and images, from the evaluations of several seeds", _run_replicates, REPLICATES),
    Command("readme", "rewrite README's generated result tables from the shipped JSON files (saved_models/, "
            "docs/results/)", _run_readme, README_TABLES),
    Command("membership", "membership inference on the complete targets of Part 1 / Part 2 run folders: "
            "loss-threshold attack, AUC, advantage, TPR at low FPR, empirical epsilon lower bound next to the "
            "accountant's", _run_membership, MEMBERSHIP),
    Command("canaries", "the one-run audit (Steinke, Nasr and Jagielski 2023): a target trained with canaries, each "
            "included at random; guessing them bounds epsilon from below, next to the accountant's epsilon of the "
            "same training", _run_canaries, CANARIES),
    Command("invert-classes", "training-data inversion of the complete targets (MI-FACE, GMI): each class "
            "reconstructed, scored by an evaluation classifier against random generator images and class means",
            _run_invert_classes, INVERT_CLASSES),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``omniglot-inversion`` command, one subparser per `COMMANDS` entry."""
    parser = argparse.ArgumentParser(
        prog="omniglot-inversion",
        description="Model inversion attack on a split network trained on Omniglot, and differential "
        "privacy as a defence (a port of the RStudio AI Blog post, 2020).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        for choice in command.options:
            choice.add_to(sub)
        sub.set_defaults(handler=command.handler)
    return parser


# TensorFlow's C++ start-up lines, which TF_CPP_MIN_LOG_LEVEL no longer silences from TensorFlow
# 2.19 on (tensorflow/tensorflow#100442): CPU features, oneDNN, CUDA and TensorRT not found
_START_UP_LINES = re.compile(r"oneDNN|cuda|cuDNN|cuFFT|cuBLAS|cuInit|TensorRT|TF-TRT|cpu_feature_guard|"
                             r"To enable the following instructions|absl::InitializeLog")


def _start_tensorflow_quietly() -> None:
    """Import TensorFlow and find its devices with the process's standard error (file descriptor 2,
    where its C++ logging writes) set aside; then write back every line of it but the start-up
    lines. Skipped where the user set TF_CPP_MIN_LOG_LEVEL."""
    if not _QUIET or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # CUDA's probe, which logs too
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not _START_UP_LINES.search(line)]
            sys.stderr.write("".join(kept))


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and return exit status 2, Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line a shipped result records
    if hasattr(sys.stdout, "reconfigure"):  # a log file sees each line when it is printed, not in blocks
        sys.stdout.reconfigure(line_buffering=True)
    out = getattr(args, "out", None) or (args.runs[0] if args.command == "evaluate" else None)
    try:
        _start_tensorflow_quietly()
        with interrupts.handled(), folder_lock(out) if out is not None else contextlib.nullcontext():
            args.handler(args)
    except UsageError as err:
        print(f"omniglot-inversion: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " continue it with --resume;" if getattr(args, "resume", None) is not None else ""
        print(f"omniglot-inversion: interrupted;{hint} completed files are intact.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
