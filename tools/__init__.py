"""Developer tooling, run from the repository root (``python -m tools.experiment``).

Not part of the kcron package: the wheel and the image carry none of it. It
holds the partitions experiment, the choice of a broker for tests and
experiments, and the one process harness the tests, the experiment and the
bench share.
"""
