"""The frontier of accuracy against leakage: the target trained under each defence at the cut and
strength of a grid, DP-SGD's targets from a Part 2 run beside them, each attacked by the post's
decoder and by the hybrid white-box search, in one table (``frontier.json``, ``frontier.csv``) and
one figure (``frontier.png``).

Layout of the sweep folder: ``targets/<defence>_<strength>/`` is a Part 1 run of that defended
target (``mobile_stage.h5`` carries the defence); each target's attacks sit in its ``attacks/``
(``dp/<level>/attacks/`` for the DP targets). Every piece resumes: a killed sweep started again
with the same command keeps what is finished and continues the rest.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path

from omniglot_inversion.defences import DEFENCES
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.files import atomic_path, record_settings, write_json
from omniglot_inversion.measure import plots
from omniglot_inversion.measure.assessment import TestSet
from omniglot_inversion.pipelines import attack_run, attack_suite, part1, run_folder
from omniglot_inversion.pipelines.jobs import check_jobs, run_each

RESULT = "frontier.json"
TABLE = "frontier.csv"
FIGURE = "frontier.png"
CONFIG = "frontier_config.json"

# (defence, strength), weak to strong: noise standard deviation relative to the code's, the share
# of the code dropped, the NoPeek weight (nopeek+laplace adds Laplacian noise of relative scale 0.5)
DEFAULT_GRID = (
    ("none", None),
    ("gaussian", 0.2), ("gaussian", 0.5), ("gaussian", 1.0),
    ("laplace", 0.2), ("laplace", 0.5), ("laplace", 1.0),
    ("dropout", 0.1), ("dropout", 0.3), ("dropout", 0.5),
    ("nopeek", 0.1), ("nopeek", 1.0), ("nopeek", 5.0),
    ("nopeek+laplace", 0.1), ("nopeek+laplace", 1.0), ("nopeek+laplace", 5.0),
)
# The attacks: the post's decoder (the target's Part 1 attacker) on all of small2, and the
# strongest white-box variant (the search started from the decoder's guess) and the generative-prior
# search (GLASS++'s latent search from the decoder's guess) on a fixed subset balanced over
# small2's alphabets, since each costs hundreds of decoder inversions per image. The decoder is
# scored on that subset too: re-identification among 260 candidates is easier than among 3,120, so
# only scores on the same images say which attack is stronger.
DECODER, WHITEBOX, PRIOR, DECODER_ON_SUBSET = "decoder", "hybrid", "prior", "decoder_subset"
COMPARED = (DECODER_ON_SUBSET, WHITEBOX, PRIOR)
WHITEBOX_IMAGES = 260
QUICK_TEST_IMAGES, QUICK_WHITEBOX_IMAGES, QUICK_ITERATIONS = 64, 20, 10
GROUPS = attack_suite.GROUPS
TABLE_METRICS = ("top1", "same_character", "ssim", "mse")


def parse_point(text: str) -> tuple[str, float | None]:
    """A grid point from ``defence:strength`` (or ``none``), as ``--grid`` takes it."""
    defence, _, strength = text.partition(":")
    if not strength:
        return defence, None
    try:
        return defence, float(strength)
    except ValueError as err:
        raise UsageError(f"Grid point {text!r}: the strength after ':' must be a number.") from err


def slug(defence: str, strength: float | None) -> str:
    """The folder name of a grid point: ``none`` or ``<defence>_<strength>``."""
    return defence.replace("+", "_") if strength is None else f"{defence.replace('+', '_')}_{strength:g}"


@dataclass(frozen=True)
class FrontierConfig:
    """Everything a sweep depends on; ``quick`` means Part 1's small sizes and fewer test images."""

    grid: tuple[tuple[str, float | None], ...] = DEFAULT_GRID
    quick: bool = False
    seed: int = 0
    whitebox_images: int = WHITEBOX_IMAGES
    data_dir: str | None = None

    def __post_init__(self):
        for defence, strength in self.grid:
            self.part1(defence, strength)  # an unknown defence or a strength out of range fails here
        if self.whitebox_images < 1:
            raise UsageError(f"whitebox_images must be at least 1, got {self.whitebox_images}.")

    def part1(self, defence: str, strength: float | None) -> part1.Part1Config:
        """The Part 1 run of one grid point."""
        if defence not in DEFENCES:
            raise UsageError(f"Unknown defence {defence!r} in the grid; choose among {', '.join(DEFENCES)}.")
        sizes = part1.QUICK if self.quick else {}
        return part1.Part1Config(seed=self.seed, data_dir=self.data_dir, defence=defence, strength=strength, **sizes)

    def specs(self) -> dict[str, attack_run.AttackSpec]:
        """Each scored attack with the sweep's settings (the decoder twice: all of small2, the subset)."""
        settings = dict(seed=self.seed)
        if self.quick:
            settings.update(surrogate_limit=part1.QUICK["attacker_size"], iterations=QUICK_ITERATIONS)
        decoder = attack_run.parse_label(DECODER, **settings)
        return {DECODER: decoder, DECODER_ON_SUBSET: decoder, WHITEBOX: attack_run.parse_label(WHITEBOX, **settings),
                PRIOR: attack_run.parse_label(PRIOR, **settings)}

    def record(self) -> dict:
        fields = dataclasses.asdict(self)
        fields.pop("data_dir")  # the archives' folder may move; their content is checked on load
        fields["grid"] = [list(point) for point in self.grid]
        return fields


def _test_sets(config: FrontierConfig) -> dict[str, TestSet]:
    test = attack_run.load_test_set(config.data_dir)
    full = test.balanced(QUICK_TEST_IMAGES) if config.quick else test
    subset = test.balanced(QUICK_WHITEBOX_IMAGES if config.quick else config.whitebox_images)
    return {DECODER: full, DECODER_ON_SUBSET: subset, WHITEBOX: subset, PRIOR: subset}


def strongest(attacks: dict, group: str) -> str:
    """The attack of `COMPARED` that re-identifies most of ``group``'s subset images (top-1, then
    SSIM when they tie, as at zero), judged on the selection half of the subset where the attacks
    were scored on halves (`assessment`), so that `reported` can give its scores on the other half."""
    def judged(name):
        return attacks[name].get("halves", {}).get(group, {}).get("select") or attacks[name][group]
    return max((name for name in COMPARED if name in attacks),
               key=lambda name: tuple(judged(name)[metric]["mean"] for metric in ("top1", "ssim")))


def reported(row: dict, group: str) -> tuple[dict, str]:
    """The strongest attack's scores on ``group`` that a table or figure shows, and the images they
    come from: the reporting half where it was chosen on the other, else the images it was chosen on."""
    chosen = row["attacks"][row["strongest"][group]]
    half = chosen.get("halves", {}).get(group, {}).get("report")
    return (half, "the other half") if half else (chosen[group], "the same images")


def strongest_top1(row: dict, group: str) -> dict:
    """The strongest attack's top-1 on ``group`` as `reported`: the frontier figure's points."""
    return reported(row, group)[0]["top1"]


def _attack_row(target: attack_suite.Target, folder: Path, config: FrontierConfig, log) -> dict:
    """Every attack against ``target``, their results in ``folder/attacks``: one frontier row."""
    tests, pretrained = _test_sets(config), target.attacker()
    row = {"target": target.label, "epsilon": target.epsilon, "val_accuracy": target.val_accuracy,
           "defence": target.stage.defence.config(), "attacks": {}}
    for name, spec in config.specs().items():
        result = attack_run.run_attack(
            target.stage, spec, tests[name], folder / "attacks" / name, data_dir=config.data_dir,
            pretrained=pretrained, pretrained_name=str(target.attacker_path), title=f"{target.label}, {name}", log=log)
        log(f"  {attack_run.summary_line(result)}")
        metrics = result["metrics"]
        row["attacks"][name] = {
            "num_images": result["num_images"], "folder": str((folder / "attacks" / name).relative_to(folder.parent)),
            **{group: {metric: metrics["seen_unseen"][group][metric] for metric in TABLE_METRICS}
               for group in GROUPS if group in metrics["seen_unseen"]},
            "halves": metrics.get("halves_seen_unseen", {}),
            "verdict_unseen": metrics.get("verdict_unseen", {}).get("text")}
    row["strongest"] = {group: strongest(row["attacks"], group) for group in GROUPS}
    return row


def defended_point(config: FrontierConfig, defence: str, strength: float | None, out: Path, log) -> dict:
    """Train (or resume) the target of one grid point as a Part 1 run, then attack it."""
    folder = out / "targets" / slug(defence, strength)
    metrics = part1.run_part1(config.part1(defence, strength), folder, resume=True, log=log)
    target = attack_suite.Target(slug(defence, strength), part1.load_target(folder),
                                 folder / run_folder.ATTACKER_WEIGHTS, None, metrics["target"]["val_accuracy"])
    return {**_attack_row(target, folder, config, log), "strength": strength, "kind": "defence"}


def dp_points(config: FrontierConfig, dp_run: Path, out: Path, log) -> list[dict]:
    """The DP-SGD targets of a Part 2 run (or of saved_models/), attacked the same way."""
    rows = []
    for target in attack_suite.find_targets(dp_run):
        if target.epsilon is None:
            continue  # the non-private target of saved_models/ is the grid's "none" point
        row = _attack_row(target, out / "dp" / target.slug, config, log)
        rows.append({**row, "defence": {"name": "dp-sgd", "epsilon": target.epsilon}, "strength": None,
                     "kind": "dp-sgd"})
    if not rows:
        raise UsageError(f"{dp_run} holds no DP-SGD target (a Part 2 run, or saved_models/); pass another --dp-run.")
    return rows


def run_frontier(config: FrontierConfig, out: str | os.PathLike, *, jobs: int = 1,
                 dp_run: str | os.PathLike | None = None, log=print) -> dict:
    """The whole sweep into ``out`` (resuming what it holds): one row per grid point, then per DP
    level of ``dp_run``; ``jobs`` grid points at once (`jobs.run_each`). Returns frontier.json."""
    check_jobs(jobs)
    out = Path(out)
    if dp_run is not None:
        attack_suite.find_targets(dp_run)  # refuse a folder without targets before training anything
    out.mkdir(parents=True, exist_ok=True)
    record_settings(out / CONFIG, config.record(), "sweep")
    work = {slug(defence, strength): (config, defence, strength, out) for defence, strength in config.grid}
    rows = dict(run_each(defended_point, work, jobs, log))
    ordered = [rows[name] for name in work]
    if dp_run is not None:
        ordered += dp_points(config, Path(dp_run), out, log)
    # the commits the sweep's targets trained at are in their run folders; this is the scoring's
    result = {"config": config.record(), "dp_run": None if dp_run is None else str(dp_run), "rows": ordered,
              "commits": {"scored": run_folder.package_commit()}}
    write_frontier(result, out)
    return result


def command(config: FrontierConfig, out: str | os.PathLike, dp_run: str | os.PathLike | None = None) -> str:
    """The CLI command that makes the sweep of ``config`` into ``out``."""
    parts = ["omniglot-inversion frontier --out", os.fspath(out), "--seed", str(config.seed)]
    if config.quick:
        parts.append("--quick")
    if dp_run is not None:
        parts += ["--dp-run", os.fspath(dp_run)]
    if config.grid != DEFAULT_GRID:
        parts += ["--grid", *(name if strength is None else f"{name}:{strength:g}" for name, strength in config.grid)]
    return " ".join(parts)


# How the defence table names each family of points, in the grid's order; DP-SGD's points are its
# noise levels, weakest (least noise) first.
FAMILIES = {"none": "none", "gaussian": "Gaussian noise", "laplace": "Laplacian noise", "dropout": "dropout",
            "nopeek": "NoPeek", "nopeek+laplace": "NoPeek + Laplace 0.5, NoPeek", "dp-sgd": "DP-SGD, noise"}


def _strength(row: dict) -> float:
    return float(row["target"].split()[-1]) if row["kind"] == "dp-sgd" else (row["strength"] or 0.0)


def defence_table(result: dict, epsilons: dict[str, float] | None = None) -> list[str]:
    """README's table of a sweep (``frontier.json``): one line per defence family, its points weak
    to strong, each cell the target's validation accuracy / the strongest attack's seen top-1 as
    `reported` (and / its same-character rate where every row records it). ``epsilons``: the DP
    targets' epsilons by label (their trainings' accounts; the rows hold the post's accounting),
    named in DP-SGD's line."""
    rows = result["rows"]
    places = {reported(row, "seen")[1] for row in rows}
    chosen = "chosen on the other half" if places == {"the other half"} else "chosen on the same images"
    metrics = ("top1", "same_character") if all("same_character" in reported(row, "seen")[0] for row in rows) \
        else ("top1",)
    names = " / ".join({"top1": "top-1", "same_character": "same character"}[metric] for metric in metrics)
    lines = [f"| defence: val accuracy / strongest attack's seen {names} ({chosen}) | weak | middle | strong |",
             "| --- | --- | --- | --- |"]
    for family, name in FAMILIES.items():
        points = sorted((row for row in rows if row["defence"]["name"] == family), key=_strength)
        if not points:
            continue
        label = name if family == "none" else f"{name} {' / '.join(f'{_strength(row):g}' for row in points)}"
        if family == "dp-sgd" and epsilons:
            label += " (epsilon " + " / ".join(f"{epsilons[row['target']]:.2f}" for row in points) + ")"
        cells = [" / ".join([f"{row['val_accuracy']:.3f}", *(f"{reported(row, 'seen')[0][metric]['mean']:.3f}"
                                                           for metric in metrics)]) for row in points]
        lines.append("| " + " | ".join([label, *cells, *[""] * (3 - len(cells))]) + " |")
    return lines


def _csv(result: dict) -> str:
    header = ["target", "kind", "defence", "strength", "epsilon", "val_accuracy"]
    columns = [(attack, group, metric)
               for attack in (DECODER, *COMPARED) for group in GROUPS for metric in TABLE_METRICS]
    header += [f"{attack}_{group}_{metric}{end}" for attack, group, metric in columns for end in ("", "_low", "_high")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in result["rows"]:
        cells = [row["target"], row["kind"], row["defence"]["name"], row["strength"], row["epsilon"],
                 row["val_accuracy"]]
        for attack, group, metric in columns:
            interval = row["attacks"].get(attack, {}).get(group, {}).get(metric)  # none: scored before it joined
            cells += [None, None, None] if interval is None else [interval["mean"], interval["low"], interval["high"]]
        writer.writerow(["" if cell is None else cell for cell in cells])
    return buffer.getvalue()


def write_frontier(result: dict, out: Path) -> None:
    """``frontier.json``, ``frontier.csv`` and ``frontier.png`` from a sweep's result."""
    write_json(out / RESULT, result)
    with atomic_path(out / TABLE) as tmp:
        tmp.write_text(_csv(result))
    plots.save_frontier(result["rows"], out / FIGURE, strongest_top1)
