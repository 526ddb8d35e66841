"""Training replicates: the attack suite's rates averaged over seeds, with intervals that hold the
run-to-run variation: ``omniglot-inversion replicates``.

One training per point says little when two trainings of one configuration differ by more than an
interval over the images. Given the attack-suite evaluations of several seeds (each an
``evaluate`` folder, or a ``reproduce --seed K`` folder holding one in ``attack_suite/``), this
pairs every row (target and attack) across them and, on seen and unseen alphabets, gives each rate
(top-1, top-5, same character) as the mean over seeds with `intervals.hierarchical_rate`'s
interval (seeds and images resampled), the per-seed values and their spread. Every attack is
reported; none is picked as the strongest, so no selection inflates a number.

Writes ``replicates.json`` and ``replicates.md`` into ``out``.
"""

from __future__ import annotations

import os
from pathlib import Path

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io.files import atomic_path, read_json, write_json
from omniglot_inversion.measure import intervals
from omniglot_inversion.measure.evaluation import interval_text
from omniglot_inversion.pipelines import attack_suite

RESULT = "replicates.json"
REPORT = "replicates.md"
RATES = ("top1", "top5", "same_character")


def _evaluation(folder: Path) -> tuple[Path, dict]:
    for path in (folder / attack_suite.EVALUATION, folder / "attack_suite" / attack_suite.EVALUATION):
        data = read_json(path)
        if data is not None:
            return path, data
    raise UsageError(f"{folder} holds no {attack_suite.EVALUATION} (nor attack_suite/{attack_suite.EVALUATION}); "
                     "give the folders of `omniglot-inversion evaluate` or `reproduce` runs.")


def _group_size(metrics: dict, group: str) -> int:
    unseen = metrics["num_unseen"]
    return unseen if group == "unseen" else metrics["num_images"] - unseen


def _check_distinct_trainings(found: list[tuple[Path, dict]], seeds: list) -> None:
    """Refuse evaluations that are not replicates: two of them attacking the same training of a
    target (the same stage weights, where the rows record their digest), or, for evaluations that
    record no digest, two with one seed."""
    digests = [{row["target"]: row["stage_sha256"] for row in data["rows"] if "stage_sha256" in row}
               for _, data in found]
    if all(digests):
        for target in set.intersection(*(set(each) for each in digests)):
            trained = [each[target] for each in digests]
            twice = [str(path) for (path, _), digest in zip(found, trained, strict=True) if trained.count(digest) > 1]
            if twice:
                raise UsageError(f"{', '.join(twice)} attacked the same training of {target!r} (the same stage "
                                 "weights): a training evaluated twice is not a replicate; give one evaluation "
                                 "per training seed.")
        return
    if None in seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"The evaluations' seeds are {seeds}: each replicate needs its own recorded seed "
                         "(a seed given twice is the same training, not a replicate).")


def combine(folders: list[str | os.PathLike], *, seed: int = 0) -> dict:
    """The replicate summary of the evaluations in ``folders`` (one per training seed)."""
    found = [_evaluation(Path(folder)) for folder in folders]
    if len(found) < 2:
        raise UsageError("Replicates need the evaluations of at least two training seeds; give two folders or more.")
    seeds = [data.get("settings", {}).get("seed") for _, data in found]
    _check_distinct_trainings(found, seeds)
    if len({(data["test_set"], data["num_images"]) for _, data in found}) != 1:
        raise UsageError("The evaluations scored different test images; replicates compare the same test set.")
    keyed = [{(row["target"], row["label"]): row["metrics"] for row in data["rows"]} for _, data in found]
    common = [key for key in keyed[0] if all(key in rows for rows in keyed[1:])]
    rows = []
    for target, label in common:
        per_seed = [rows_of[target, label] for rows_of in keyed]
        for group in attack_suite.GROUPS:
            if not all(group in metrics["seen_unseen"] for metrics in per_seed):
                continue
            sizes = [_group_size(metrics, group) for metrics in per_seed]
            rows.append({"target": target, "attack": label, "group": group, "images": sizes[0], **{
                rate: intervals.hierarchical_rate(
                    [round(metrics["seen_unseen"][group][rate]["mean"] * size)
                     for metrics, size in zip(per_seed, sizes, strict=True)], sizes, seed=seed)
                for rate in RATES}})
    return {"folders": [str(path) for path, _ in found], "seeds": seeds, "test_set": found[0][1]["test_set"],
            "chance": found[0][1]["chance"], "interval": "two-level bootstrap over seeds and images, at least the "
            "pooled Clopper-Pearson interval (intervals.hierarchical_rate)", "rows": rows}


def report(result: dict) -> str:
    chance = result["chance"]
    lines = ["# Training replicates", "",
             f"Seeds {', '.join(map(str, result['seeds']))}; {result['test_set']}. Each rate is the mean over "
             f"the seeds with a 95 % {result['interval']}; in brackets after it, each seed's value. Chance: top-1 "
             f"{chance['top1']:.4f}, top-5 {chance['top5']:.4f}, same character {chance['same_character']:.4f}.", "",
             "| target | attack | alphabets | images | top-1 | top-5 | same character |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        cells = [f"{interval_text(row[rate])} ({' / '.join(f'{value:.3f}' for value in row[rate]['per_seed'])})"
                 for rate in RATES]
        lines.append(f"| {row['target']} | {row['attack']} | {row['group']} | {row['images']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def run_replicates(folders: list[str | os.PathLike], out: str | os.PathLike, *, seed: int = 0) -> dict:
    """`combine` the folders' evaluations and write ``replicates.json`` and ``replicates.md`` into ``out``."""
    result = combine(folders, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULT, result)
    with atomic_path(out / REPORT) as tmp:
        tmp.write_text(report(result))
    return result
