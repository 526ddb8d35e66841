"""Ship trained weights and results: copy the complete targets, mobile stages and attackers of a
Part 1 and a Part 2 run into one folder (``saved_models/``) with a ``manifest.json`` that lets
anyone check and reproduce them; beside them, the frontier sweep (`export_frontier`) and the
attack suite's evaluation (`export_attack_suite`).

For each file the manifest holds its sha256, what it is, the exact command that made it, the
commit of the package that shipped it, seed, epochs, package and library versions, wall time, and
the metrics of its run (with what the membership audit needs: data sizes, delta, normalisation), plus
``small1_mse``: the attacker's reconstruction MSE (clipped to [0, 1]) on all of ``small1`` through
the shipped mobile stage, recomputed here from the shipped files so that a test can check it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.io.files import atomic_path, read_json, write_json
from omniglot_inversion.network import training
from omniglot_inversion.network.interception import load_intercepted
from omniglot_inversion.network.models import AttackModel
from omniglot_inversion.pipelines.part2 import DP_WEIGHTS, level_privacy
from omniglot_inversion.pipelines.run_folder import (
    ATTACKER_WEIGHTS,
    DATA_NOTE,
    FIGURE,
    MANIFEST,
    METRICS,
    MOBILE_STAGE,
    TARGET_WEIGHTS,
    package_commit,
    sha256,
    versions,
)


def part1_command(config: dict, out: str) -> str:
    """The CLI command that makes a Part 1 run with ``config`` (as metrics.json records it)."""
    command = (f"omniglot-inversion part1 --out {out} --seed {config['seed']} --epochs {config['epochs']} "
               f"--attacker-epochs {config['attacker_epochs']} --batch-size {config['batch_size']}"
               + (" --keras-training-mode" if config.get("keras_training_mode") else ""))
    if config.get("defence", "none") != "none":
        command += f" --defence {config['defence']}"
        if config.get("strength") is not None:
            command += f" --strength {config['strength']:g}"
    return command


def part2_command(config: dict, out: str) -> str:
    """The CLI command that makes a Part 2 run with ``config`` (as metrics.json records it)."""
    noise = " ".join(f"{value:g}" for value in config["noise_multipliers"])
    command = (f"omniglot-inversion part2 --out {out} --seed {config['seed']} --noise {noise} "
               f"--epochs {config['epochs']} --attacker-epochs {config['attacker_epochs']} "
               f"--batch-size {config['batch_size']} --engine {config['engine']} --clip {config['l2_norm_clip']:g} "
               f"--learning-rate {config['learning_rate']:g} --delta {config['delta']:g}")
    if config.get("steps_per_epoch") is not None:
        command += f" --steps-per-epoch {config['steps_per_epoch']}"
    if config.get("num_microbatches") is not None:
        command += f" --microbatches {config['num_microbatches']}"
    if config.get("reproducible_noise"):
        command += " --reproducible-noise"
    return command + (" --strict" if config["normalization"] == "group" else "")


def _completed(run: Path, sections: list[str], made_by: str) -> dict:
    metrics = read_json(run / METRICS)
    missing = [name for name in sections if metrics is None or name not in metrics]
    if missing:
        raise UsageError(f"{run} holds no complete {made_by} run (missing: {', '.join(missing)}); finish it with "
                         f"`omniglot-inversion {made_by} --out {run} --resume`.")
    return metrics


def _histories(record: dict) -> dict:
    """The per-epoch rows of a run's (or noise level's) target and attacker trainings, which README's
    Part 1 table compares with the post's per-epoch numbers."""
    return {step: [{key: value for key, value in row.items() if key != "seconds"} for row in record[step]["history"]]
            for step in ("target", "attacker")}


def _sources(part1: Path, part2: Path, require_all: bool) -> tuple[list[dict], list[str]]:
    """One entry per shipped pair (mobile stage, attacker): where it comes from and its run's record;
    and the names of the noise levels left out because they are not finished (``require_all``
    refuses those instead)."""
    metrics = _completed(part1, ["target", "attacker", "test"], "part1")
    command = part1_command(metrics["config"], os.fspath(part1))
    entries = [{"name": "part1", "folder": part1, "target": TARGET_WEIGHTS, "command": command,
                "config": metrics["config"], "trained_at": metrics.get("commits", {}),
                "versions": metrics["versions"],
                "wall_seconds": {step: metrics[step]["seconds"] for step in ("target", "attacker", "test")},
                "metrics": {"train_accuracy": metrics["target"]["train_accuracy"],
                            "val_accuracy": metrics["target"]["val_accuracy"],
                            "attacker_train_mse": metrics["attacker"]["train_mse"],
                            "test_mse": metrics["test"]["test_mse"], "test_images": metrics["test"]["num_images"]},
                "history": _histories(metrics)}]
    metrics = _completed(part2, ["noise_levels"], "part2")
    command = part2_command(metrics["config"], os.fspath(part2))
    missing = []
    for noise in metrics["config"]["noise_multipliers"]:
        level = metrics["noise_levels"].get(f"{noise:g}", {})
        if not {"target", "attacker", "test"} <= set(level):
            if require_all:
                raise UsageError(f"{part2} has not finished noise {noise:g}; finish it with "
                                 f"`omniglot-inversion part2 --out {part2} --resume` (same options).")
            missing.append(f"dp_noise_{noise:g}")
            continue
        entries.append({
            "name": f"dp_noise_{noise:g}", "folder": part2 / f"noise_{noise:g}", "target": DP_WEIGHTS,
            "command": command,
            "config": metrics["config"], "versions": metrics["versions"], "trained_at": level.get("commits", {}),
            "wall_seconds": {step: level[step]["seconds"] for step in ("target", "attacker", "test")},
            "metrics": {"noise_multiplier": noise, **level_privacy(metrics["config"], noise, level),
                        "train_accuracy": level["target"]["train_accuracy"],
                        "val_accuracy": level["target"]["val_accuracy"],
                        "attacker_train_mse": level["attacker"]["train_mse"], "test_mse": level["test"]["test_mse"],
                        "test_images": level["test"]["num_images"]},
            "history": _histories(level),
            # what the guarantee covers and where the noise came from, as the run recorded them
            "privacy": {key: metrics.get(key) for key in ("noise_source", "guarantees")},
        })
    return entries, missing


def _ship(source: Path, target: Path) -> Path:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def small1_mse(mobile_stage: Path, attacker_weights: Path, data_dir=None) -> float:
    """Reconstruction MSE (clipped to [0, 1]) on all of ``small1`` of an attacker through a mobile stage file."""
    target = load_intercepted(mobile_stage)
    attacker = AttackModel()
    attacker.load_weights(attacker_weights)
    images, _ = data.as_arrays(data.load_split("small1", data_dir))
    return float(np.mean((training.reconstruct(attacker, target.mobile_step, images) - images) ** 2))


def export_models(part1: str | os.PathLike, part2: str | os.PathLike, out: str | os.PathLike,
                  command: str, data_dir=None, require_all: bool = True) -> dict:
    """Copy each run's complete target, mobile stage and attacker into ``out`` as
    ``<name>_target.h5``, ``<name>_mobile_stage.h5`` and ``<name>_attacker.h5``, its reconstruction
    figure as ``<name>_reconstruction.png``, and write ``manifest.json``, whose ``regenerate`` is
    ``command`` (the one that makes and ships everything); returns the manifest.
    ``require_all=False`` ships the finished noise levels of an unfinished Part 2 and lists the
    others under ``missing``."""
    # refuses unfinished runs before anything is written
    entries, missing = _sources(Path(part1), Path(part2), require_all)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, commit = {}, package_commit(exclude=out)
    for entry in entries:
        copied = {}
        for kind, source in (("target", entry["target"]), ("mobile_stage", MOBILE_STAGE),
                             ("attacker", ATTACKER_WEIGHTS)):
            copied[kind] = _ship(entry["folder"] / source, out / f"{entry['name']}_{kind}.h5")
        _ship(entry["folder"] / FIGURE, out / f"{entry['name']}_reconstruction.png")
        mse = small1_mse(copied["mobile_stage"], copied["attacker"], data_dir)
        config = entry["config"]
        # the commit each step ran at ("+modified": the tree differed from it), then the shipping's
        record = {key: entry[key] for key in ("command", "versions", "wall_seconds", "trained_at", "history")}
        record.update(seed=config["seed"], epochs=config["epochs"], attacker_epochs=config["attacker_epochs"],
                      commit=commit, data=DATA_NOTE, metrics={**entry["metrics"], "small1_mse": mse},
                      training={"train_size": config.get("train_size", data.TARGET_TRAIN_SIZE),
                                "val_size": config.get("val_size"), "delta": config.get("delta", 1e-5),
                                "normalization": config.get("normalization", "batch")})
        if "privacy" in entry:
            record["privacy"] = entry["privacy"]
        for kind, path in copied.items():
            files[path.name] = {"kind": kind, "run": entry["name"], "sha256": sha256(path), **record}
    manifest = {**read_json(out / MANIFEST, default={}), "missing": missing,
                "loading": "see README.md in this folder",
                "regenerate": command}
    manifest["files"] = {**manifest.get("files", {}), **files}
    return record_checksums(out, manifest)


CHECKSUMS = "checksums"
SHIP_LOG = "ship.log"  # what each shipping into the folder did, appended (`append_ship_log`)


def record_checksums(out: str | os.PathLike, manifest: dict | None = None) -> dict:
    """Write ``manifest`` (default: the one in ``out``) with its `CHECKSUMS` entry made anew: the
    sha256 of every file under ``out`` but the manifest and the ship log (which record the others),
    by path relative to ``out``, as the files are at the end of the shipping. Returns the manifest."""
    out = Path(out)
    manifest = read_json(out / MANIFEST, default={}) if manifest is None else manifest
    manifest[CHECKSUMS] = {path.relative_to(out).as_posix(): sha256(path) for path in sorted(out.rglob("*"))
                           if path.is_file() and path not in (out / MANIFEST, out / SHIP_LOG)}
    write_json(out / MANIFEST, manifest)
    return manifest


def append_ship_log(out: str | os.PathLike, lines: list[str]) -> None:
    """Add ``lines`` to the folder's `SHIP_LOG` (kept across shippings: the folder's history)."""
    path = Path(out) / SHIP_LOG
    before = path.read_text() if path.exists() else ""
    with atomic_path(path) as tmp:
        tmp.write_text(before + "".join(f"{line}\n" for line in lines))


def export_frontier(sweep: str | os.PathLike, out: str | os.PathLike, command: str) -> dict:
    """Ship a finished frontier sweep into ``out``: ``frontier.json``, ``.csv`` and ``.png``, and
    each defended target's on-device stage as ``defended_<point>_mobile_stage.h5`` (the stage
    carries its defence; the undefended point is Part 1's own target, shipped as ``part1``). The
    manifest gains one entry per stage and a ``frontier`` entry naming ``command``; the entries
    already there are kept. Returns the manifest."""
    from omniglot_inversion.pipelines import frontier

    sweep, out = Path(sweep), Path(out)
    result = read_json(sweep / frontier.RESULT)
    if result is None:
        raise UsageError(f"{sweep} holds no finished sweep ({frontier.RESULT}); run `omniglot-inversion frontier` "
                         "into it first.")
    out.mkdir(parents=True, exist_ok=True)
    files, commit = {}, package_commit(exclude=out)
    for row in result["rows"]:
        if row["kind"] != "defence" or row["defence"]["name"] == "none":
            continue
        run = sweep / "targets" / row["target"]
        metrics = _completed(run, ["target"], "part1")
        path = _ship(run / MOBILE_STAGE, out / f"defended_{row['target']}_mobile_stage.h5")
        files[path.name] = {
            "kind": "mobile_stage", "run": f"defended_{row['target']}", "sha256": sha256(path),
            "command": part1_command(metrics["config"], os.fspath(run)), "commit": commit,
            "trained_at": metrics.get("commits", {}),
            "versions": metrics["versions"],
            "wall_seconds": {"target": metrics["target"]["seconds"]}, "seed": metrics["config"]["seed"],
            "epochs": metrics["config"]["epochs"], "data": DATA_NOTE,
            "metrics": {"val_accuracy": metrics["target"]["val_accuracy"], "defence": metrics["target"]["defence"]}}
    for name in (frontier.RESULT, frontier.TABLE, frontier.FIGURE):
        _ship(sweep / name, out / name)
    manifest = read_json(out / MANIFEST, default={})
    manifest["files"] = {**manifest.get("files", {}), **files}
    manifest["frontier"] = {"files": [frontier.RESULT, frontier.TABLE, frontier.FIGURE], "command": command,
                            "commit": commit, "trained_at": result.get("commits", {}),
                            "versions": next((entry["versions"] for entry in files.values()), None)}
    return record_checksums(out, manifest)


ATTACK_SUITE = "attack_suite"
# what two evaluations must share for their rows to sit in one table
_SAME_EVALUATION = ("settings", "test_set", "num_images", "shown_images", "confidence")


def export_attack_suite(evaluation: str | os.PathLike, out: str | os.PathLike, command: str) -> dict:
    """Ship a finished evaluation (`attack_suite.evaluate_runs`) into ``out/attack_suite/``: its
    ``evaluation.json`` and ``report.md``, each target's figure of reconstructions and the
    privacy-utility figures. The rows of the targets evaluated here replace the ones shipped before
    and the other targets' rows stay, so that the targets of a long suite can be evaluated and
    shipped one at a time; an evaluation of other test images or settings than the shipped one is
    refused before anything is written. The manifest's ``attack_suite`` entry names, per target, the
    command and commit that made its rows. Returns the manifest."""
    from omniglot_inversion.pipelines import attack_suite

    evaluation, out = Path(evaluation), Path(out)
    result = read_json(evaluation / attack_suite.EVALUATION)
    if result is None:
        raise UsageError(f"{evaluation} holds no finished evaluation ({attack_suite.EVALUATION}); run "
                         "`omniglot-inversion evaluate` into it first.")
    folder = out / ATTACK_SUITE
    shipped = read_json(folder / attack_suite.EVALUATION)
    manifest = read_json(out / MANIFEST, default={})
    if shipped is not None:
        differ = [key for key in _SAME_EVALUATION if shipped[key] != result[key]]
        if differ:
            made = sorted({entry["command"] for entry in manifest.get(ATTACK_SUITE, {}).get("targets", {}).values()})
            raise UsageError(f"{folder} holds an evaluation with other {', '.join(differ)} than {evaluation}'s, so "
                             f"their rows cannot share a table; evaluate with the options of "
                             f"{' / '.join(f'`{text}`' for text in made) or 'the shipped one'}, or ship into "
                             "another folder.")
    evaluated = set(row["target"] for row in result["rows"])
    folder.mkdir(parents=True, exist_ok=True)
    rows = [row for row in (shipped or {}).get("rows", []) if row["target"] not in evaluated]
    for row in result["rows"]:
        figure = row["figures"]["all_attacks"]
        _ship(evaluation / figure, folder / figure)
        # the per-attack folders stay in the evaluation's folder; only the target's figure ships
        rows.append({**{key: value for key, value in row.items() if key != "folder"},
                     "figures": {"all_attacks": figure}})
    # the targets in the manifest's order: non-private first, then by epsilon (stable: attacks keep theirs)
    rows.sort(key=lambda row: (row["epsilon"] is not None, row["epsilon"] or 0.0))
    labels = [*(shipped or {}).get("attacks", []), *result["attacks"]]
    merged = {**result, "folders": sorted({*(shipped or {}).get("folders", []), *result["folders"]}),
              "attacks": list(dict.fromkeys(labels)), "rows": rows}
    merged.pop("privacy_utility_figures", None)
    figures = attack_suite.save_privacy_utility_figures(rows, folder)
    if figures:
        merged["privacy_utility_figures"] = figures
    write_json(folder / attack_suite.EVALUATION, merged)
    with atomic_path(folder / attack_suite.REPORT) as tmp:
        tmp.write_text(attack_suite.report_markdown(merged))
    made = {"command": command, "commit": package_commit(exclude=out), "versions": versions(),
            "scored_at": result.get("commits", {}).get("scored")}
    targets = {**manifest.get(ATTACK_SUITE, {}).get("targets", {}), **{target: made for target in sorted(evaluated)}}
    manifest[ATTACK_SUITE] = {"folder": ATTACK_SUITE, "files": [attack_suite.EVALUATION, attack_suite.REPORT],
                              "targets": targets}
    return record_checksums(out, manifest)
