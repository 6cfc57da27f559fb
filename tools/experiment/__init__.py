"""The partitions experiment: what 1, 2 or 3 partitions do to a group of workers.

``runner`` runs the cases against a real broker, ``report`` turns the results
into a table, a Markdown report and a chart, ``command`` is the command line
(``python -m tools.experiment partitions``, ``make partitions-experiment``).
"""

from tools.experiment.report import write_report
from tools.experiment.runner import CaseResult, Failed, Skipped, run_case, run_experiment

__all__ = ["CaseResult", "Failed", "Skipped", "run_case", "run_experiment", "write_report"]
