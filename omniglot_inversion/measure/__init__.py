"""Measurement: reconstruction metrics, baselines and intervals (`evaluation`), verdicts on seen
and unseen alphabets (`assessment`), the membership-inference audit (`membership`) and figures
(`plots`). Pure computations on arrays; the only I/O is a figure written through `io.files`.

May import `io` only; it never imports a model, an attack or a pipeline, so every room above
can score with it.
"""
