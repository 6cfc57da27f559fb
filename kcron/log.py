"""Logging that engineers can grep.

Text: ``2026-11-28T20:01:00.012Z INFO  consumer-00 kcron.worker [job run] message k=v ...``
JSON: one object per line with the same fields.

Structured fields are passed with ``extra=fields(...)``; ``job`` and ``run``
go in front of the message so every line of one run greps together.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_FIELDS_ATTR = "kcron_fields"
_PREFIX_KEYS = ("job", "run")


def fields(**values: Any) -> dict[str, Any]:
    """``logger.info("msg", extra=fields(job=..., run=...))``"""
    return {_FIELDS_ATTR: values}


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
        f".{int(record.msecs):03d}Z"
    )


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self, instance: str) -> None:
        super().__init__()
        self._instance = instance

    def format(self, record: logging.LogRecord) -> str:
        values: dict[str, Any] = dict(getattr(record, _FIELDS_ATTR, {}))
        prefix = " ".join(str(values.pop(k)) for k in _PREFIX_KEYS if k in values)
        parts = [_timestamp(record), f"{record.levelname:<5}", self._instance, record.name]
        if prefix:
            parts.append(f"[{prefix}]")
        parts.append(record.getMessage())
        parts.extend(f"{k}={_text_value(v)}" for k, v in values.items() if v is not None)
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, instance: str) -> None:
        super().__init__()
        self._instance = instance

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "instance": self._instance,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, _FIELDS_ATTR, {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure(log_format: str, level: str, instance: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    formatter: logging.Formatter = (
        JsonFormatter(instance) if log_format == "json" else TextFormatter(instance)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
