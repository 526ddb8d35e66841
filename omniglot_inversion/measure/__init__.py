"""Measurement: reconstruction metrics, baselines and intervals (`evaluation`), exact intervals, paired
tests and Holm's adjustment (`intervals`), verdicts on seen and unseen alphabets (`assessment`), the
membership-inference audit (`membership`), the attacks with reference models (`reference_attacks`:
LiRA, RMIA), the one-run canary audit's bound (`one_run_audit`), the scores of class inversions
(`class_scores`) and figures (`plots`). Pure computations on arrays; the only I/O is a figure
written through `io.files`.

May import `io` only; it never imports a model, an attack or a pipeline, so every room above can
score with it.
"""
