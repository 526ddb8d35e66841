import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from omniglot_inversion import cli
from omniglot_inversion.dp import engines
from omniglot_inversion.errors import UsageError
from omniglot_inversion.io import data
from omniglot_inversion.network import training
from omniglot_inversion.network.models import AttackModel
from omniglot_inversion.pipelines import part1, run_folder


def test_part1_quick_writes_weights_metrics_and_figure(part1_quick_run, data_dir):
    out = part1_quick_run.out
    assert part1_quick_run.code == 0
    printed = part1_quick_run.printed
    assert "target epoch 2/2" in printed and "attacker epoch 5/5" in printed
    # not a terminal: one line per epoch and a few for the steps, no progress bar
    lines = printed.splitlines()
    assert sum(" epoch " in line for line in lines) == 2 + 5 and len(lines) < 2 + 5 + 10
    metrics = json.loads((out / run_folder.METRICS).read_text())
    assert metrics["config"]["seed"] == 0 and metrics["config"]["epochs"] == 2 and metrics["state"] == "finished"
    assert len(metrics["target"]["history"]) == 2 and len(metrics["attacker"]["history"]) == 5
    assert 0.0 <= metrics["target"]["val_accuracy"] <= 1.0
    assert 0.0 < metrics["test"]["test_mse"] < 1.0
    import tensorflow as tf  # after the run: the run itself starts TensorFlow quietly

    assert metrics["versions"]["tensorflow"] == tf.__version__ and metrics["versions"]["keras"]
    for name in (run_folder.TARGET_WEIGHTS, run_folder.MOBILE_STAGE, run_folder.ATTACKER_WEIGHTS):
        assert (out / name).stat().st_size > 100_000
    figure = np.asarray(Image.open(out / run_folder.FIGURE))
    assert figure.shape[1] > figure.shape[0] > 100
    assert not list(out.glob(".*partial*"))
    # the saved weights reload into fresh models and reproduce the recorded test MSE
    target = part1.load_target(out)
    images = data.as_arrays(data.load_split("small2", data_dir, limit=64))[0]
    attacker = AttackModel()
    attacker.load_weights(out / run_folder.ATTACKER_WEIGHTS)
    guesses = training.reconstruct(attacker, target.mobile_step, images)
    assert abs(float(np.mean((guesses - images) ** 2)) - metrics["test"]["test_mse"]) < 1e-6


def test_existing_run_is_refused_without_overwrite(tmp_path, capsys):
    # refused before the data are looked at: no archives needed
    (tmp_path / run_folder.METRICS).write_text("{}")
    assert cli.main(["part1", "--quick", "--out", str(tmp_path), "--data-dir", str(tmp_path / "no-data")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / run_folder.METRICS).read_text() == "{}"


def test_step_without_its_input_names_the_missing_step(tmp_path, capsys):
    assert cli.main(["train-attacker", "--quick", "--out", str(tmp_path), "--data-dir", str(tmp_path / "no-data")]) == 2
    assert "run `omniglot-inversion train-target`" in capsys.readouterr().err


def test_missing_data_folder_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "omniglot_inversion.cli", "part1", "--quick", "--out", str(tmp_path / "run"),
         "--data-dir", str(tmp_path / "no-such-folder")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no-such-folder' does not exist" in result.stderr and "OMNIGLOT_DIR" in result.stderr
    # a run that cannot start leaves no trace, so the corrected command is not refused
    assert not (tmp_path / "run").exists()


def test_epochs_below_one_are_refused_by_the_command_and_the_api(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["part1", "--quick", "--epochs", "0", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(UsageError, match="epochs must be at least 1, got 0"):
        part1.Part1Config(epochs=0)
    assert not (tmp_path / "run").exists()


def test_the_clis_own_copies_of_choices_and_defaults_match_the_package():
    """The CLI writes out the choices and defaults of modules that import TensorFlow (so that its
    import starts none); they are the package's."""
    from omniglot_inversion import attacks, defences
    from omniglot_inversion.attacks import class_inversion, prior, whitebox
    from omniglot_inversion.dp import sampling
    from omniglot_inversion.pipelines import attack_suite

    assert cli.METHODS == attacks.METHODS and cli.SURROGATES == attacks.SURROGATES
    assert cli.DEFENCES == tuple(defences.DEFENCES) and cli.DEFAULT_ATTACKS == attack_suite.DEFAULT_ATTACKS
    assert cli.ENGINES == engines.CLI_ENGINES and cli.SAMPLINGS == sampling.SAMPLINGS
    assert cli.CLASS_INVERSIONS == class_inversion.METHODS
    assert cli.WHITEBOX == dict(iterations=whitebox.ITERATIONS, tv_weight=whitebox.TV_WEIGHT,
                                learning_rate=whitebox.LEARNING_RATE, tolerance=whitebox.PLATEAU_TOLERANCE,
                                window=whitebox.PLATEAU_WINDOW, starts=whitebox.STARTS)
    assert cli.PRIOR == dict(iterations=prior.ITERATIONS, learning_rate=prior.LEARNING_RATE,
                             tolerance=prior.PLATEAU_TOLERANCE, window=prior.PLATEAU_WINDOW)


def test_help_prints_only_the_help_and_starts_no_tensorflow():
    environment = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    for argv in (["--help"], ["part2", "--help"], ["evaluate", "--help"]):
        result = subprocess.run([sys.executable, "-m", "omniglot_inversion.cli", *argv], capture_output=True,
                                text=True, timeout=60, env=environment)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert result.stdout.startswith("usage: omniglot-inversion")
    loaded = subprocess.run([sys.executable, "-c", "import sys, omniglot_inversion.cli; "
                             "print(sorted({'tensorflow', 'keras', 'numpy'} & set(sys.modules)))"],
                            capture_output=True, text=True, timeout=60)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_a_run_prints_no_tensorflow_start_up_lines_unless_asked(tmp_path):
    """A command that starts TensorFlow prints only its own lines; with TF_CPP_MIN_LOG_LEVEL set by
    the user, TensorFlow's own start-up lines are theirs to see."""
    environment = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "omniglot_inversion.cli", "reconstruct", "--out", str(tmp_path / "none")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line for line in result.stderr.splitlines() if "error:" in line]
    assert "target_weights.h5 does not exist" in result.stderr
    asked = subprocess.run(command, capture_output=True, text=True, timeout=120,
                           env={**environment, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert len(asked.stderr.splitlines()) > 1  # TensorFlow's own lines (CPU features, oneDNN, CUDA)


def test_each_command_takes_the_shared_options_as_declared_once():
    parser = cli.build_parser()
    by_name = {command.name: command for command in cli.COMMANDS}
    assert set(by_name) == set(parser._subparsers._group_actions[0].choices)
    for command in cli.COMMANDS:
        for shared in cli.SHARED.values():
            taken = [choice for choice in command.options if choice.flags == shared.flags]
            assert len(taken) <= 1, f"{command.name} takes {shared.flags} twice"
            if taken:  # same type and action as the shared declaration; only help, default, required differ
                for key in ("type", "action"):
                    assert taken[0].settings.get(key) == shared.settings.get(key), (command.name, shared.flags)
    seeded = parser.parse_args(["frontier", "--out", "sweep", "--seed", "3", "--jobs", "2"])
    assert (seeded.seed, seeded.jobs, seeded.quick, seeded.data_dir) == (3, 2, False, None)
    assert parser.parse_args(["epsilon"]).out is None
    with pytest.raises(SystemExit):
        parser.parse_args(["frontier", "--seed", "3"])  # --out is required where it names the run folder


def test_engine_choices_are_the_privacy_modules_cli_engines(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["part2", "--out", "run"]).engine == "fast" == engines.CLI_ENGINES[0]
    for engine in engines.CLI_ENGINES:
        assert parser.parse_args(["part2", "--out", "run", "--engine", engine]).engine == engine
    for engine in ("fast-exact", "no-such-engine"):  # the tests' reference engine is no CLI choice
        with pytest.raises(SystemExit):
            parser.parse_args(["part2", "--out", "run", "--engine", engine])
    listed = capsys.readouterr().err.split("choose from ")[1].split(")")[0]
    assert tuple(name.strip(" '") for name in listed.split(",")) == engines.CLI_ENGINES
    assert set(engines.CLI_ENGINES) <= set(engines.ENGINES)


def test_train_target_refuses_its_folder_then_resume_keeps_the_trained_target(tmp_path, data_dir, capsys):
    argv = ["train-target", "--quick", "--epochs", "1", "--out", str(tmp_path), "--data-dir", data_dir]
    assert cli.main(argv) == 0
    weights = (tmp_path / run_folder.TARGET_WEIGHTS).read_bytes()
    assert cli.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main([*argv, "--resume"]) == 0
    assert "target: done before, kept" in capsys.readouterr().out
    assert (tmp_path / run_folder.TARGET_WEIGHTS).read_bytes() == weights
    assert cli.main([*argv[:-4], "--epochs", "2", "--out", str(tmp_path), "--data-dir", data_dir, "--resume"]) == 2
    assert "epochs=1 there, 2 here" in capsys.readouterr().err


def test_a_failed_step_is_recorded_and_resume_continues_after_the_last_finished_step(tmp_path, data_dir,
                                                                                    monkeypatch, capsys):
    def broken(config, out, log):
        raise RuntimeError("disk full")

    steps = dict(part1.PART1_STEPS)
    monkeypatch.setattr(part1, "PART1_STEPS", (("target", steps["target"]), ("attacker", broken),
                                              ("test", steps["test"])))
    argv = ["part1", "--quick", "--epochs", "1", "--attacker-epochs", "1", "--out", str(tmp_path),
            "--data-dir", data_dir]
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(argv)
    metrics = json.loads((tmp_path / run_folder.METRICS).read_text())
    assert metrics["state"] == "failed" and metrics["error"] == "RuntimeError: disk full"
    assert "target" in metrics and "attacker" not in metrics
    monkeypatch.setattr(part1, "PART1_STEPS", tuple(steps.items()))
    assert cli.main([*argv, "--resume"]) == 0
    assert "target: done before, kept" in capsys.readouterr().out
    metrics = json.loads((tmp_path / run_folder.METRICS).read_text())
    assert metrics["state"] == "finished" and "error" not in metrics and "test" in metrics
