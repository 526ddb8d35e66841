"""Where a full-size reproduce spends its time, phase by phase, from what its run recorded in a
shipped folder: each training's ``wall_seconds`` in ``manifest.json`` (Part 1, Part 2's DP targets
and their attackers, the frontier's defended targets) and each attack's ``seconds`` in
``attack_suite/evaluation.json``, summed per phase as CPU-process seconds (Part 2 and the frontier
run several processes side by side under ``--jobs``, so their wall time is shorter).

    python benchmarks/phase_times.py [--folder saved_models] [--json phases.json]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from omniglot_inversion.io.files import read_json, write_json

SAVED = Path(__file__).resolve().parents[1] / "saved_models"


def phases(folder: Path) -> dict[str, dict]:
    """Per phase: its process seconds in all, the number of runs and the longest run's seconds."""
    runs: dict[str, list[float]] = defaultdict(list)
    seen = set()
    for name, entry in read_json(folder / "manifest.json")["files"].items():
        if entry["run"] in seen or "wall_seconds" not in entry:  # one run ships several files
            continue
        seen.add(entry["run"])
        wall = entry["wall_seconds"]
        part = ("frontier: defended target training" if name.startswith("defended_")
                else "part 2: DP target training" if entry["run"].startswith("dp_") else "part 1: target training")
        runs[part].append(wall["target"])
        if "attacker" in wall:
            runs[part.replace("target training", "decoder training and test")].append(wall["attacker"] + wall["test"])
    evaluation = read_json(folder / "attack_suite" / "evaluation.json")
    for row in evaluation["rows"] if evaluation else []:
        runs[f"attack suite: {row['label']}"].append(row["seconds"]["prepare"] + row["seconds"]["invert"])
    return {part: {"seconds": sum(values), "runs": len(values), "longest": max(values)}
            for part, values in sorted(runs.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=SAVED)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    table = phases(args.folder)
    total = sum(row["seconds"] for row in table.values())
    print("| phase | runs | process seconds in all | longest run | share |")
    print("| --- | --- | --- | --- | --- |")
    for part, row in table.items():
        share = row["seconds"] / total
        print(f"| {part} | {row['runs']} | {row['seconds']:,.0f} | {row['longest']:,.0f} | {share:.0%} |")
    print(f"| all recorded | | {total:,.0f} | | |")
    if args.json is not None:
        write_json(args.json, {"folder": str(args.folder), "phases": table, "total_seconds": total})


if __name__ == "__main__":
    main()
