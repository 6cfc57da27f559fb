"""Instants typed by a user: ``now``, ``now-2h``, ``-30m``, ``+1d`` or ISO 8601.

Pure (no Kafka): ``kcron check --from`` and ``kcron backfill`` share it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from kcron.jobfile import parse_duration


def parse_when(text: str, now: datetime, default_tz: tzinfo = UTC) -> datetime:
    """``now``, ``now-2h``, ``-30m``, ``+1d`` or an ISO 8601 time (naive = default zone)."""
    value = text.strip()
    if value.startswith("now"):
        value = value[3:] or "+0s"
    if value[:1] in "+-":
        sign = -1 if value[0] == "-" else 1
        seconds = parse_duration(value[1:]) if value[1:] not in ("0s", "0") else 0.0
        return now + sign * timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"'{text}' is not a time: use ISO 8601 (2026-11-28T09:00), now, now-1h or -30m"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=default_tz)
    return moment.astimezone(UTC)
