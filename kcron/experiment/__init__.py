"""``kcron experiment partitions``: what 1, 2 or 3 partitions do to a group of workers.

``runner`` runs the cases against a real broker, ``report`` turns the results
into a table, a Markdown report and a chart, ``command`` is the CLI.
"""

from kcron.experiment.command import experiment_group
from kcron.experiment.report import write_report
from kcron.experiment.runner import CaseResult, Failed, Skipped, run_case, run_experiment

__all__ = [
    "CaseResult",
    "Failed",
    "Skipped",
    "experiment_group",
    "run_case",
    "run_experiment",
    "write_report",
]
