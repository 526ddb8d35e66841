"""`reproduce --quick` end to end: every step into one folder, the report with every section, the
report made again from the JSON files alone, a second run that redoes nothing."""

import contextlib
import io
import json
import re
import shutil

from omniglot_inversion import cli
from omniglot_inversion.pipelines import report

SECTIONS = ("## Part 1", "## Part 2", "## Attacks on the code", "## Defences at the cut", "## Membership inference",
            "## The one-run canary audit", "## Training-data inversion of the classifiers", "## The split MLP")


def test_quick_reproduce_writes_every_section_and_its_figures(quick_reproduce):
    out, printed = quick_reproduce
    text = (out / report.REPORT).read_text()
    for heading in SECTIONS:
        assert heading in text
    assert "Not run yet" not in text
    record = json.loads((out / report.RECORD).read_text())
    assert set(record["seconds"]) == {*report.FOLDERS, "total"}
    assert record["command"] == (f"omniglot-inversion reproduce --out {out} --seed 0 --quick "
                                 f"--ship {out.parent / 'shipped'}")
    assert f"done in {record['seconds']['total']:.0f} s" in printed
    for name in (*report.FIGURES.values(), "privacy_utility_hybrid.png"):
        assert (out / name).stat().st_size > 5_000
    # the post's numbers stand beside the run's
    assert "| target, epoch 1: train / validation accuracy |" in text and "0.195 / 0.377 |" in text
    assert re.search(r"\| noise 0\.7 \| [\d.]+ \| [\d.]+ / [\d.]+ \(4\.0\) \|", text)  # the post's epsilon 4.0
    # the audits with reference models, the canaries of both trainings, every class inversion
    assert "| non-private (2 reference models) | RMIA online |" in text
    assert "| non_private | " in text and "| noise_0.7 | " in text
    assert "| noise 0.7 | " in text and "| mi-face |" in text and "| gmi |" in text
    # a log file gets one line per epoch and per step, a few hundred at most
    assert len(printed.splitlines()) < 300


def test_ship_copies_every_target_stage_attacker_the_frontier_and_the_attack_suite(quick_reproduce):
    out, _ = quick_reproduce
    shipped = out.parent / "shipped"
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(
        [f"{run}_{kind}.h5" for run in ("part1", "dp_noise_0.7") for kind in ("target", "mobile_stage", "attacker")]
        + ["defended_laplace_1_mobile_stage.h5"])
    assert None not in {entry["commit"] for entry in manifest["files"].values()}
    assert (shipped / "frontier.json").read_text() == (out / "frontier" / "frontier.json").read_text()
    assert manifest["frontier"]["command"].startswith("omniglot-inversion reproduce --out")
    suite = json.loads((shipped / "attack_suite" / "evaluation.json").read_text())
    assert [row["metrics"] for row in suite["rows"]] == [
        row["metrics"] for row in json.loads((out / "attack_suite" / "evaluation.json").read_text())["rows"]]
    assert set(manifest["attack_suite"]["targets"]) == {"non-private", "noise 0.7"}
    assert manifest["attack_suite"]["targets"]["noise 0.7"]["command"] == manifest["frontier"]["command"]


def test_report_is_made_from_the_json_files_alone(quick_reproduce, tmp_path, capsys):
    out, _ = quick_reproduce
    copy = tmp_path / "json_only"
    for path in out.rglob("*.json"):
        (copy / path.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy / path.relative_to(out))
    assert cli.main(["report", str(copy)]) == 0
    assert (copy / report.REPORT).read_text() == (out / report.REPORT).read_text()
    for name in report.FIGURES.values():
        assert (copy / name).stat().st_size > 5_000
    # a step whose JSON is gone is named as not run, the others stay
    shutil.rmtree(copy / report.FOLDERS["frontier"])
    assert cli.main(["report", str(copy)]) == 0
    text = (copy / report.REPORT).read_text()
    assert text.count("Not run yet") == 1 and "frontier/frontier.json` is missing" in text
    assert "## Membership inference" in text and "| non-private | 64 |" in text
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert "holds no reproduce run" in capsys.readouterr().err


def test_reproduce_started_again_trains_nothing(quick_reproduce, data_dir):
    out, _ = quick_reproduce
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["reproduce", "--quick", "--out", str(out), "--data-dir", data_dir]) == 0
    lines = printed.getvalue().splitlines()
    assert not [line for line in lines if " epoch " in line]
    assert not [line for line in lines if "images inverted" in line]


def test_reproduce_refuses_a_folder_of_other_settings(quick_reproduce, data_dir, capsys):
    out, _ = quick_reproduce
    assert cli.main(["reproduce", "--quick", "--seed", "1", "--out", str(out), "--data-dir", data_dir]) == 2
    assert "other settings" in capsys.readouterr().err
