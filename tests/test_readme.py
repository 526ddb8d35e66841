import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    lines = (REPO / "README.md").read_text().splitlines()
    return [line.strip() for line in lines[:12] if line.startswith("    ")]


def test_readme_opens_with_the_main_and_the_test_command():
    main_command, test_command = _readme_commands()
    assert "omniglot-inversion part1" in main_command and "pytest" in test_command
    # the machine's Python 3.11, 3.12 or 3.13: no minor version named
    for command in (main_command, test_command):
        assert command.startswith("python3 -m venv .venv && ") and "python3." not in command


def test_ci_runs_the_readme_test_command_verbatim():
    _, test_command = _readme_commands()
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


def test_setup_cfg_declares_the_console_script():
    assert "omniglot-inversion = omniglot_inversion.cli:main" in (REPO / "setup.cfg").read_text()


def _table(text: str, title: str, header: str) -> str:
    table = text[text.index(title):] + "\n"  # a table at the end of the file ends there
    return table[:table.index("\n\n", table.index(header))]


def test_every_test_named_in_the_bad_input_and_fault_tables_exists():
    faults = (REPO / "docs" / "faults.md").read_text()
    for title, header, rows in (("What a user sees for each bad input", "| bad input", 17),
                                ("What a user sees after each fault", "| fault", 9)):
        table = _table(faults, title, header)
        assert table.count("\n| ") - 1 >= rows
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", table)
        assert len(named) >= rows
        for path, name in named:
            assert f"def {name}(" in (REPO / path).read_text(), f"{path}::{name} is named in docs/faults.md but missing"


def test_readme_python_example_runs_as_written(data_dir, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) == 1
    monkeypatch.setenv("OMNIGLOT_DIR", data_dir)
    monkeypatch.chdir(REPO)  # the example names saved_models/ relative to the repository
    names = {}
    exec(compile(blocks[0], "README.md", "exec"), names)
    assert names["codes"].shape == (40, 1, 1, 32) and names["guesses"].shape == (40, 105, 105, 1)
    assert set(names["scores"]["seen_unseen"]) == {"seen", "unseen"}
    assert names["noisy"].defence.name == "laplace"
    printed = capsys.readouterr().out
    assert re.search(r"'epsilon': 3\.39", printed), printed  # noise 0.7 at the post's settings


def test_readmes_generated_tables_equal_their_rendering_from_the_shipped_files():
    from omniglot_inversion.pipelines import readme_tables

    text = (REPO / "README.md").read_text()
    for name in ("part1", "part2", "attack_suite", "attack_suite_findings", "frontier", "membership_reference"):
        assert f"<!-- generated: {name} -->" in text, f"README lacks the generated block {name!r}"
    assert "<!-- generated: class_inversion -->" in (REPO / "docs" / "class_inversion.md").read_text()
    for name in readme_tables.GENERATED:
        assert "<!-- generated: " in (REPO / name).read_text(), f"{name} holds no generated block"
        assert readme_tables.render(REPO / name, REPO) == (REPO / name).read_text(), (
            f"{name}'s generated tables differ from the shipped files: run `omniglot-inversion readme` in the "
            "repository's root")


def test_the_shipped_attack_reports_name_each_dp_target_with_its_trainings_epsilon():
    from omniglot_inversion.pipelines import attack_suite, part2, readme_tables

    manifest = json.loads((REPO / "saved_models" / "manifest.json").read_text())
    own = {f"noise {entry['metrics']['noise_multiplier']:g}": part2.entry_privacy(entry)
           for entry in manifest["files"].values()
           if entry["kind"] == "target" and entry["run"].startswith("dp_noise_")}
    # the evaluation was recorded before runs kept an account: its rows hold the post's accounting
    evaluation = json.loads((REPO / "saved_models" / "attack_suite" / attack_suite.EVALUATION).read_text())
    recorded = {row["target"]: row["epsilon"] for row in evaluation["rows"] if row["epsilon"] is not None}
    for path in ("saved_models/attack_suite/report.md", "docs/report/attack_suite/report.md"):
        text = (REPO / path).read_text()
        assert path in readme_tables.GENERATED
        assert len(own) == 3
        for label, privacy in own.items():
            assert recorded[label] == pytest.approx(privacy["epsilon_post"])
            assert f"| {label} (epsilon {privacy['epsilon']:.2f}) |" in text
            assert f"| {label} | {privacy['epsilon']:.2f} |" in text  # the verdicts' rows
            assert f"{privacy['epsilon_post']:.2f}" not in text, (path, label)
        assert "before rates carried exact intervals" in text  # the scoring it states is the one recorded


def test_rendering_rewrites_only_the_blocks_and_refuses_an_unknown_one(tmp_path):
    import pytest

    from omniglot_inversion import cli
    from omniglot_inversion.pipelines import readme_tables

    for path in readme_tables.MEMBERSHIP:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes((REPO / path).read_bytes())
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- generated: membership_reference -->\n| stale |\n<!-- /generated -->\nend\n")
    assert cli.main(["readme", str(readme), "--check"]) == 2
    assert cli.main(["readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- generated: membership_reference -->\n| target | attack | AUC |")
    assert "| stale |" not in text and text.endswith("<!-- /generated -->\nend\n")
    assert "| non-private (4 reference models) | RMIA online | 0.661 [0.645, 0.676] |" in text
    assert cli.main(["readme", str(readme), "--check"]) == 0
    # without files: every file with generated blocks under --root
    assert cli.main(["readme", "--root", str(REPO), "--check"]) == 0
    readme.write_text("<!-- generated: nonsense -->\nx\n<!-- /generated -->\n")
    with pytest.raises(Exception, match="unknown generated block 'nonsense'"):
        readme_tables.render(readme)
    assert readme.read_text() == "<!-- generated: nonsense -->\nx\n<!-- /generated -->\n"


def test_rendering_a_shipped_file_keeps_the_manifests_checksums_true_and_logs_it(tmp_path):
    from omniglot_inversion.pipelines import readme_tables, shipping
    from omniglot_inversion.pipelines.run_folder import sha256

    shipped = tmp_path / "saved_models"
    (shipped / "attack_suite").mkdir(parents=True)
    for path in ["manifest.json", "attack_suite/evaluation.json", *(p.name for p in (REPO / "saved_models").glob(
            "*_mobile_stage.h5") if not p.name.startswith("defended_"))]:
        (shipped / path).write_bytes((REPO / "saved_models" / path).read_bytes())
    report = shipped / "attack_suite" / "report.md"
    report.write_text("<!-- generated: attack_suite_report -->\n| stale |\n<!-- /generated -->\n")
    assert readme_tables.update(report, tmp_path)
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert manifest[shipping.CHECKSUMS]["attack_suite/report.md"] == sha256(report)
    assert report.read_text() == (REPO / "saved_models" / "attack_suite" / "report.md").read_text()
    (line,) = (shipped / shipping.SHIP_LOG).read_text().splitlines()
    assert "attack_suite/report.md rendered from the shipped files by `omniglot-inversion readme` at commit" in line
    assert not readme_tables.update(report, tmp_path)  # unchanged: nothing recorded again
    assert len((shipped / shipping.SHIP_LOG).read_text().splitlines()) == 1
