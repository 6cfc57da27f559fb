"""The worker: a thin loop (loop.py) over a hold queue, a job runner, a settler
and partition state, talking to Kafka only through the port in port.py."""

from kcron.worker.loop import Worker
from kcron.worker.runner import run_environment

__all__ = ["Worker", "run_environment"]
