"""DP-SGD: the two engines behind one call (`engines`: TensorFlow Privacy's optimizer, as the
post, and the package's `fast_engine`), noise drawn from a secret key or, for tests, from a seed
(`seeded_noise`), how each step's batch is drawn (`sampling`: Poisson or shuffled), and epsilon
(`accounting`).

May import `network`, `io` and `defences`; never attacks, measurement or pipelines.
"""
