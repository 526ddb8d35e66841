"""``omniglot-inversion``: the post's steps as subcommands. Parses options, calls runs, prints."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from omniglot_inversion.errors import UsageError  # noqa: E402


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_part1_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="run folder (created if missing)")
    parser.add_argument("--data-dir", help="folder with the four Omniglot archives (default: $OMNIGLOT_DIR, "
                        "else download through tfds)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (about a minute)")
    parser.add_argument("--epochs", type=_positive_int, help="target epochs (post: 10)")
    parser.add_argument("--attacker-epochs", type=_positive_int, help="attacker epochs (post: 100)")
    parser.add_argument("--batch-size", type=_positive_int, help="batch size (post: 32)")
    parser.add_argument("--keras-training-mode", action="store_true",
                        help="call the target with training=True while training (batch norm on batch "
                        "statistics, dropout on); the post's loop runs it in inference mode")


def _part1_config(args: argparse.Namespace):
    from omniglot_inversion.runs import QUICK, Part1Config

    values = dict(QUICK) if args.quick else {}
    for field in ("epochs", "attacker_epochs", "batch_size"):
        if getattr(args, field) is not None:
            values[field] = getattr(args, field)
    return Part1Config(seed=args.seed, keras_training_mode=args.keras_training_mode,
                       data_dir=args.data_dir, **values)


def _run_part1_step(args: argparse.Namespace) -> None:
    from omniglot_inversion import runs

    config = _part1_config(args)
    if args.command == "part1":
        runs.run_part1(config, args.out, overwrite=args.overwrite)
        print(f"Part 1 done: {args.out / runs.METRICS}")
        return
    if args.command == "train-target":
        out = runs.prepare_run_folder(args.out, args.overwrite)
        runs.train_target_step(config, out)
        return
    step = {"train-attacker": runs.train_attacker_step, "reconstruct": runs.reconstruct_step}[args.command]
    step(config, args.out)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``omniglot-inversion`` command."""
    parser = argparse.ArgumentParser(
        prog="omniglot-inversion",
        description="Model inversion attack on a split network trained on Omniglot, and differential "
        "privacy as a defence (a port of the RStudio AI Blog post, 2020).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "part1": "Part 1 end to end: train the target, train the attacker, reconstruct small2",
        "train-target": "train the split target model (10 epochs) into a run folder",
        "train-attacker": "train an attacker against the run folder's target (100 epochs on small1)",
        "reconstruct": "reconstruct small2 with the run folder's attacker; figure and test MSE",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text)
        _add_part1_options(sub)
        if name in ("part1", "train-target"):
            sub.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
        sub.set_defaults(handler=_run_part1_step)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and return exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except UsageError as err:
        print(f"omniglot-inversion: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
