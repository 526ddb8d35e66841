"""Everything in one folder: the post (Part 1, Part 2 at its three noise levels), every attack
against each of their targets, the defences' frontier, the membership audit with
`REFERENCE_MODELS` reference models per target, the one-run canary audits (non-private and DP at
the post's noise 0.7), the training-data inversion of every target's classes and the split MLP,
then the report (`report.write_report`). Each step is a run of its own command in a subfolder and
resumes as that command does, so a killed ``reproduce`` started again continues where it stopped.

``quick``: the commands' small sizes (one noise level, one defended target, the post's decoder
and the hybrid search only, two reference models), for a smoke run and the tests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from omniglot_inversion.io.data import check_data_source
from omniglot_inversion.io.files import record_settings, write_json
from omniglot_inversion.pipelines import (
    attack_run,
    attack_suite,
    canary_audit,
    class_inversion_run,
    frontier,
    membership_audit,
    part1,
    part2,
    report,
    run_folder,
    split_mlp,
)
from omniglot_inversion.pipelines.jobs import check_jobs

SETTINGS = "reproduce_config.json"
QUICK_GRID = (("laplace", 1.0),)
QUICK_ATTACKS = ("decoder", "hybrid")
REFERENCE_MODELS = 4  # per target, for LiRA and RMIA (quick: 2, the fewest that give each record IN and OUT)
CANARY_AUDITS = {"non_private": None, "noise_0.7": 0.7}  # folder -> noise multiplier (None: no DP)


@dataclass(frozen=True)
class ReproduceConfig:
    """What a reproduce folder depends on (``data_dir`` aside: the archives are checked on load)."""

    quick: bool = False
    seed: int = 0
    data_dir: str | None = None

    def command(self, out: str | os.PathLike, jobs: int = 1) -> str:
        return (f"omniglot-inversion reproduce --out {os.fspath(out)} --seed {self.seed}"
                + (f" --jobs {jobs}" if jobs > 1 else "") + (" --quick" if self.quick else ""))


def _attack_settings(config: ReproduceConfig) -> dict:
    if not config.quick:
        return {"seed": config.seed}
    return {"seed": config.seed, "surrogate_limit": attack_run.QUICK_SURROGATE_IMAGES,
            "iterations": frontier.QUICK_ITERATIONS}


def steps(config: ReproduceConfig, out: Path, jobs: int, log):
    """The steps in order, as (name, function of no arguments)."""
    folders = {name: out / folder for name, folder in report.FOLDERS.items()}
    sizes = part1.QUICK if config.quick else {}
    part1_config = part1.Part1Config(seed=config.seed, data_dir=config.data_dir, **sizes)
    part2_config = part2.Part2Config(seed=config.seed, data_dir=config.data_dir,
                                     **(part2.QUICK if config.quick else {}))
    grid = QUICK_GRID if config.quick else frontier.DEFAULT_GRID
    frontier_config = frontier.FrontierConfig(grid=grid, quick=config.quick, seed=config.seed,
                                              data_dir=config.data_dir)
    mlp_settings = dict(seed=config.seed, data_dir=config.data_dir)
    mlp_config = split_mlp.SplitMLPConfig.quick(**mlp_settings) if config.quick else split_mlp.SplitMLPConfig(
        **mlp_settings)
    limit = attack_run.QUICK_TEST_IMAGES if config.quick else None
    inversion_config = class_inversion_run.ClassInversionConfig(
        seed=config.seed, **(class_inversion_run.QUICK if config.quick else {}))

    def canaries():
        for name, noise in CANARY_AUDITS.items():
            canary_config = canary_audit.CanaryConfig(
                noise_multiplier=noise, seed=config.seed, data_dir=config.data_dir,
                **(canary_audit.QUICK if config.quick else {}))
            canary_audit.run_canaries(canary_config, folders["canaries"] / name, resume=True, log=log)
    # cheap steps first, the two long sweeps last (each resumes where a killed run stopped)
    return [
        ("part1", lambda: part1.run_part1(part1_config, folders["part1"], resume=True, log=log)),
        ("part2", lambda: part2.run_part2(part2_config, folders["part2"], resume=True, jobs=jobs, log=log)),
        ("membership", lambda: membership_audit.run_membership(
            [folders["part1"], folders["part2"]], folders["membership"], data_dir=config.data_dir, seed=config.seed,
            limit=limit, reference_count=2 if config.quick else REFERENCE_MODELS, log=log)),
        ("canaries", canaries),
        # quick Part 1 and Part 2 train on different numbers of records, and one evaluation
        # classifier scores targets of the same private records only: quick inverts Part 2's
        ("class_inversion", lambda: class_inversion_run.run_class_inversion(
            [folders["part2"]] if config.quick else [folders["part1"], folders["part2"]], folders["class_inversion"],
            inversion_config, data_dir=config.data_dir, log=log)),
        ("split_mlp", lambda: split_mlp.run_split_mlp(mlp_config, folders["split_mlp"], log=log)),
        ("frontier", lambda: frontier.run_frontier(frontier_config, folders["frontier"], jobs=jobs,
                                                   dp_run=folders["part2"], log=log)),
        ("attack_suite", lambda: attack_suite.evaluate_runs(
            [folders["part1"], folders["part2"]], folders["attack_suite"], data_dir=config.data_dir,
            attacks=QUICK_ATTACKS if config.quick else attack_suite.DEFAULT_ATTACKS, settings=_attack_settings(config),
            limit=limit, log=log)),
    ]


def ship(out: Path, folder: str | os.PathLike, command: str) -> dict:
    """Copy a finished reproduce folder's targets, stages, attackers, frontier and attack suite into
    ``folder`` (`shipping.export_models`, `shipping.export_frontier`, `shipping.export_attack_suite`)
    and append what was shipped to its ship log (`shipping.SHIP_LOG`); returns the manifest."""
    from omniglot_inversion.pipelines import shipping

    shipping.export_models(out / report.FOLDERS["part1"], out / report.FOLDERS["part2"], folder, command)
    shipping.export_frontier(out / report.FOLDERS["frontier"], folder, command)
    manifest = shipping.export_attack_suite(out / report.FOLDERS["attack_suite"], folder, command)
    shipping.append_ship_log(folder, [
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} shipped from {os.fspath(out)} by `{command}` at commit "
        f"{run_folder.package_commit(exclude=folder)}",
        *(f"  {name} {digest}" for name, digest in manifest[shipping.CHECKSUMS].items())])
    return manifest


def run_reproduce(config: ReproduceConfig, out: str | os.PathLike, *, jobs: int = 1,
                  ship_to: str | os.PathLike | None = None, log=print) -> dict:
    """Every step into ``out`` (each resuming what it holds), then ``report.md``, then with
    ``ship_to`` the shipped files there (`shipping`); returns the record written to
    ``reproduce.json`` (the command, versions, seconds of each step this time)."""
    check_jobs(jobs)
    check_data_source(config.data_dir)  # nothing is written when the archives are missing
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record_settings(out / SETTINGS, {"quick": config.quick, "seed": config.seed}, "reproduce run")
    started, seconds = time.perf_counter(), {}
    for name, step in steps(config, out, jobs, log):
        log(f"== reproduce: {name}")
        begun = time.perf_counter()
        step()
        seconds[name] = time.perf_counter() - begun
    seconds["total"] = time.perf_counter() - started
    command = config.command(out, jobs) + ("" if ship_to is None else f" --ship {os.fspath(ship_to)}")
    record = {"command": command, "versions": run_folder.versions(), "seconds": seconds}
    write_json(out / report.RECORD, record)
    report.write_report(out)
    if ship_to is not None:
        ship(out, ship_to, record["command"])
        log(f"reproduce: shipped into {ship_to}")
    log(f"reproduce: done in {seconds['total']:.0f} s; report {out / report.REPORT}")
    return record
