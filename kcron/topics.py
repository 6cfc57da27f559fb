"""Which names a queue may have. Pure.

A queue is a topic, and kcron derives more topics from it: ``NAME.retry``,
``NAME.dlq`` and ``NAME.events`` (the worker's) and ``NAME.state`` (the producer's, for the
default topic). So a queue name must be a legal Kafka topic name that leaves
room for those suffixes, and must not itself look like a derived topic:
``x.retry`` as a queue would collide with queue ``x``'s retry topic.
"""

from __future__ import annotations

import re

MAX_TOPIC_CHARS = 249  # Kafka's limit
DERIVED_SUFFIXES = {
    ".retry": "retry",
    ".dlq": "dead-letter",
    ".state": "dispatch-state",
    ".events": "run-events",
}
# NAME.events, the longest derived name, must still fit Kafka's limit.
MAX_QUEUE_CHARS = MAX_TOPIC_CHARS - max(len(s) for s in DERIVED_SUFFIXES)
TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")


def is_topic_name(text: str) -> bool:
    """A legal Kafka topic name."""
    return bool(TOPIC_RE.fullmatch(text)) and text not in (".", "..")


def queue_name_problem(text: str) -> str | None:
    """Why ``text`` cannot name a queue, or None if it can."""
    if not is_topic_name(text):
        return (
            f"not a valid Kafka topic name (1-{MAX_QUEUE_CHARS} letters, digits, '.', '_', '-'; "
            "not '.' or '..')"
        )
    if len(text) > MAX_QUEUE_CHARS:
        return (
            f"too long for a queue ({len(text)} characters): at most {MAX_QUEUE_CHARS}, so "
            f"that its events topic NAME.events fits Kafka's {MAX_TOPIC_CHARS}"
        )
    for suffix, role in DERIVED_SUFFIXES.items():
        if text.endswith(suffix):
            base = text[: -len(suffix)]
            owner = f" of queue '{base}'" if base else ""
            return f"must not end in '{suffix}': that names the {role} topic{owner}"
    if text.startswith("__"):
        return "names starting with '__' are Kafka's internal topics"
    return None
