"""Interrupted runs and repeatability: a run killed mid-training and resumed ends with the same
metrics as an uninterrupted run of the same seed, leaves no partial file under a final name, and
one seed gives the same metrics twice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import pytest
from cli_processes import PART2, command, run

from omniglot_inversion import cli
from omniglot_inversion.io.checkpoints import STATE
from omniglot_inversion.pipelines import attack_run, run_folder


def _kill_after_epoch(args: list[str], out: Path, data_dir: str, state: Path, epoch: int,
                      while_running=None) -> None:
    """Start the run, SIGKILL it once ``state`` records ``epoch`` epochs (mid-training); call
    ``while_running()`` just before the kill."""
    process = subprocess.Popen(command(args, out, data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 500
    try:
        while time.monotonic() < deadline:
            if state.exists() and len(json.loads(state.read_text())["history"]) >= epoch:
                break
            assert process.poll() is None, f"run ended before it could be killed: {process.stderr.read()[-2000:]}"
            time.sleep(0.05)
        else:
            pytest.fail(f"{state} never reached epoch {epoch}")
        if while_running is not None:
            while_running()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _flat(section, path: str = "") -> dict:
    """A metrics section flattened to {path: value}, wall times left out."""
    if isinstance(section, dict):
        items = section.items()
    elif isinstance(section, list):
        items = enumerate(section)
    else:
        return {path: section}
    flat = {}
    for key, value in items:
        if key not in ("seconds", "seconds_per_step"):
            flat.update(_flat(value, f"{path}/{key}"))
    return flat


def _assert_same_metrics(got, expected) -> None:
    """The same entries: numbers within 1e-6 (relative), everything else (names, states) equal."""
    got, expected = _flat(got), _flat(expected)
    assert got.keys() == expected.keys()
    numeric = [key for key, value in expected.items() if isinstance(value, (int, float)) and
               not isinstance(value, bool)]
    assert {key: got[key] for key in numeric} == pytest.approx({key: expected[key] for key in numeric}, rel=1e-6)
    assert {key: got[key] for key in expected if key not in numeric} == \
        {key: expected[key] for key in expected if key not in numeric}


def _assert_no_partial_files(out: Path) -> None:
    assert not [path for path in out.rglob("*") if ".partial" in path.name]
    for path in out.rglob("*.h5"):
        with h5py.File(path, "r"):
            pass
    for path in out.rglob("*.json"):
        json.loads(path.read_text())


def test_killed_part1_resumes_to_the_uninterrupted_metrics(tmp_path, data_dir, capsys, part1_quick_run):
    # the reference: the session's uninterrupted run of the same command, made in another process,
    # so this also shows that one seed repeats a run
    whole, resumed, PART1 = part1_quick_run.out, tmp_path / "resumed", part1_quick_run.args

    def second_run_is_refused():  # a second run into the folder while the first is training
        assert cli.main([*PART1, "--resume", "--out", str(resumed), "--data-dir", data_dir]) == 2
        assert "Another run (process" in capsys.readouterr().err

    _kill_after_epoch(PART1, resumed, data_dir, resumed / run_folder.CHECKPOINTS / "target" / STATE, epoch=1,
                      while_running=second_run_is_refused)
    _assert_no_partial_files(resumed)
    assert not (resumed / run_folder.TARGET_WEIGHTS).exists()  # the step was cut short: nothing under its name
    assert json.loads((resumed / run_folder.METRICS).read_text())["state"] == "running"  # a kill cannot say more
    run([*PART1, "--resume"], resumed, data_dir)  # the killed run's lock is not stuck
    expected, got = (json.loads((folder / run_folder.METRICS).read_text()) for folder in (whole, resumed))
    for section in ("target", "attacker", "test"):
        _assert_same_metrics(got[section], expected[section])
    checkpoints = resumed / run_folder.CHECKPOINTS
    assert not checkpoints.exists() or not any(checkpoints.rglob("*.index"))
    _assert_no_partial_files(resumed)


def test_killed_part2_resumes_to_the_uninterrupted_metrics(tmp_path, data_dir, part2_quick_run):
    whole, resumed = part2_quick_run.out, tmp_path / "resumed"
    # cut the second noise level's DP training short: the first level is complete by then
    state = resumed / "noise_0.5" / run_folder.CHECKPOINTS / "dp_target" / STATE
    _kill_after_epoch(PART2, resumed, data_dir, state, epoch=1)
    _assert_no_partial_files(resumed)
    done = json.loads((resumed / run_folder.METRICS).read_text())["noise_levels"]
    assert set(done["0.7"]) >= {"target", "attacker", "test"} and "target" not in done.get("0.5", {})
    run([*PART2, "--resume"], resumed, data_dir)
    expected, got = (json.loads((folder / run_folder.METRICS).read_text()) for folder in (whole, resumed))
    _assert_same_metrics(got["noise_levels"], expected["noise_levels"])
    _assert_no_partial_files(resumed)


def test_levels_run_in_parallel_give_the_sequential_metrics(tmp_path, data_dir, part2_quick_run):
    """--jobs 2 trains the two noise levels in two processes of one thread each; every number but
    the wall times matches a one-process run on one thread."""
    sequential, parallel = part2_quick_run.out, tmp_path / "parallel"
    run([*PART2, "--jobs", "2"], parallel, data_dir)
    expected, got = (json.loads((folder / run_folder.METRICS).read_text()) for folder in (sequential, parallel))
    assert set(got["noise_levels"]) == {"0.7", "0.5"}
    _assert_same_metrics(got["noise_levels"], expected["noise_levels"])
    for noise in ("0.7", "0.5"):
        record = json.loads((parallel / f"noise_{noise}" / "level.json").read_text())
        assert record == got["noise_levels"][noise]
    _assert_no_partial_files(parallel)


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / run_folder.METRICS).write_text(json.dumps({"config": {"seed": 1, "epochs": 2}}))
    assert cli.main(["part1", "--quick", "--epochs", "3", "--seed", "1", "--out", str(out), "--data-dir",
                     str(tmp_path / "no-data"), "--resume"]) == 2
    error = capsys.readouterr().err
    assert "holds a run started with other settings" in error and "epochs=2 there, 3 here" in error


def test_overwrite_and_resume_together_are_refused(tmp_path, capsys):
    assert cli.main(["part1", "--quick", "--out", str(tmp_path), "--overwrite", "--resume"]) == 2
    assert "pass one of them" in capsys.readouterr().err


def test_ctrl_c_exits_130_with_the_resume_hint(tmp_path, data_dir):
    out = tmp_path / "run"
    argv = command(["part1", "--quick", "--epochs", "6"], out, data_dir)  # interrupted mid-training
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ})
    state = out / run_folder.CHECKPOINTS / "target" / STATE
    deadline = time.monotonic() + 500
    while not state.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted; continue it with --resume" in stderr and "Traceback" not in stderr
    _assert_no_partial_files(out)


def test_overwrite_replaces_every_file_of_a_finished_part2_run(tmp_path, data_dir, part2_quick_run):
    out = tmp_path / "run"
    shutil.copytree(part2_quick_run.out, out)  # a finished run of other settings
    quick = ["part2", "--quick", "--noise", "0.7", "--epochs", "1", "--steps-per-epoch", "2", "--attacker-epochs", "1"]
    level = out / "noise_0.7"
    old_weights = (level / "dp_model_weights.h5").read_bytes()
    (out / "notes-of-the-old-run.txt").write_text("old")
    run([*quick, "--seed", "4", "--overwrite"], out, data_dir)
    metrics = json.loads((out / run_folder.METRICS).read_text())
    assert metrics["config"]["seed"] == 4
    # the level was trained again: other weights, and its record is the new run's
    assert (level / "dp_model_weights.h5").read_bytes() != old_weights
    assert metrics["noise_levels"]["0.7"] == json.loads((level / "level.json").read_text())
    assert not (out / "notes-of-the-old-run.txt").exists() and not (out / run_folder.REPLACED).exists()
    assert not (out / "noise_0.5").exists()  # the old run's second level went with it
    _assert_no_partial_files(out)


def test_overwrite_that_fails_to_start_loses_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / run_folder.METRICS).write_text('{"config": {}}')
    assert cli.main(["part1", "--quick", "--overwrite", "--out", str(out), "--data-dir", str(tmp_path / "no")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (out / run_folder.METRICS).read_text() == '{"config": {}}' and not (out / run_folder.REPLACED).exists()


def test_killed_attack_resumes_to_the_uninterrupted_metrics(tmp_path, data_dir, capsys):
    attack = ["attack", "--intercepted", str(Path(__file__).resolve().parents[1] / "saved_models" /
                                             "part1_mobile_stage.h5"), "--quick", "--limit", "16",
              "--attacker-epochs", "6"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run(attack, whole, data_dir)
    _kill_after_epoch(attack, resumed, data_dir, resumed / attack_run.CHECKPOINTS / "decoder" / STATE, epoch=2)
    assert not (resumed / attack_run.RESULT).exists()
    _assert_no_partial_files(resumed)
    assert cli.main([*attack, "--out", str(resumed), "--data-dir", data_dir]) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    run([*attack, "--resume"], resumed, data_dir)
    expected, got = (json.loads((folder / attack_run.RESULT).read_text()) for folder in (whole, resumed))
    _assert_same_metrics(got["metrics"], expected["metrics"])
    assert not (resumed / attack_run.CHECKPOINTS).exists()
    _assert_no_partial_files(resumed)
