"""kcron: a distributed cron on Apache Kafka."""

__version__ = "0.1.0"
