"""``python -m tools.experiment partitions ...`` (from the repository root)."""

from tools.experiment.command import experiment_group

experiment_group(prog_name="python -m tools.experiment")
