"""Experiments that write run folders: Part 1 (`part1`) and Part 2 (`part2`) of the post, one attack on
a stage (`attack_run`), every attack against every target (`attack_suite`), the defences' frontier
(`frontier`), the membership audit (`membership_audit`, its reference models in `reference_models`),
the one-run canary audit (`canary_audit`), training-data inversion of the classifiers
(`class_inversion_run`), the split MLP (`split_mlp`), all of them at once (`reproduce`) with its
report (`report`), README's generated tables (`readme_tables`), the attack suite over training seeds
(`replicates`), and shipping results into ``saved_models/`` (`shipping`). What they share about a
run folder (refusal, overwrite, resume, state, metrics, manifest names) is in `run_folder`;
processes side by side in `jobs`.

The top room below the CLI: it may import every other room, and none of them imports it.
"""
