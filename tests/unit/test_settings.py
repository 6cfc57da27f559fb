"""kcron.settings: defaults, precedence of given values, validation."""

from __future__ import annotations

import dataclasses
from zoneinfo import ZoneInfo

import pytest

from kcron.errors import ConfigError, ExitCode
from kcron.settings import Settings


def test_defaults():
    s = Settings()
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.topic == "kcron.jobs"
    assert s.timezone == "UTC"
    assert s.concurrency == 8
    assert s.log_format == "text"
    assert s.log_level == "INFO"
    assert s.metrics_port is None


def test_from_values_overrides_only_what_is_given():
    s = Settings.from_values({"topic": "prod.jobs", "concurrency": 8, "timezone": "Europe/Paris"})
    assert (s.topic, s.concurrency, s.timezone) == ("prod.jobs", 8, "Europe/Paris")
    assert s.bootstrap_servers == Settings().bootstrap_servers
    assert s.group == Settings().group


def test_none_values_fall_back_to_defaults():
    # click passes None for every flag the user did not give and no env var set
    values = {f.name: None for f in dataclasses.fields(Settings)}
    assert Settings.from_values(values) == Settings()
    s = Settings.from_values({"topic": None, "concurrency": 4, "grace_s": None})
    assert s.topic == "kcron.jobs"
    assert s.concurrency == 4
    assert s.grace_s == 30.0


def test_falsy_but_not_none_values_are_kept():
    s = Settings.from_values({"grace_s": 0.0, "instance": "", "kafka_options": ()})
    assert s.grace_s == 0.0
    assert s.instance == ""


def test_unknown_keys_are_ignored():
    s = Settings.from_values({"topic": "t", "verbose": True, "jobfile": "jobs.cron"})
    assert s.topic == "t"
    assert not hasattr(s, "verbose")


def test_log_level_is_case_insensitive():
    assert Settings.from_values({"log_level": "debug"}).log_level == "DEBUG"
    assert Settings.from_values({"log_level": "Warning"}).log_level == "WARNING"


def test_tz_property():
    assert Settings(timezone="Asia/Tokyo").tz == ZoneInfo("Asia/Tokyo")


def test_frozen():
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.topic = "other"  # type: ignore[misc]


def test_replace_returns_a_validated_copy():
    s = Settings()
    t = s.replace(concurrency=3)
    assert (s.concurrency, t.concurrency) == (8, 3)
    with pytest.raises(ConfigError):
        s.replace(concurrency=0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"timezone": ""}, "unknown time zone ''"),
        ({"timezone": "Europe"}, "unknown time zone 'Europe'"),  # a directory of zones
        ({"timezone": "../../etc/passwd"}, "unknown time zone"),
        ({"timezone": "x" * 5000}, "unknown time zone"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"concurrency": -3}, "concurrency must be at least 1"),
        ({"partitions": 0}, "partitions must be at least 1"),
        ({"replication_factor": 0}, "replication-factor must be at least 1"),
        ({"max_output_bytes": 0}, "max-output-bytes must be at least 1"),
        ({"session_timeout_ms": 0}, "session-timeout-ms must be at least 1"),
        ({"fetch_wait_max_ms": 0}, "fetch-wait-max-ms must be at least 1"),
        ({"log_format": "xml"}, "log format must be one of text, json"),
        ({"log_format": "JSON"}, "log format must be one of text, json"),
        ({"log_level": "trace"}, "log level must be one of DEBUG, INFO, WARNING, ERROR"),
        ({"bootstrap_servers": "  "}, "bootstrap servers must not be empty"),
        ({"topic": ""}, "topic must not be empty"),
        ({"grace_s": -1}, "grace must be >= 0"),
        ({"watch_interval_s": 0}, "watch interval > 0"),
    ],
)
def test_invalid_values_raise_config_error(values, message):
    with pytest.raises(ConfigError) as info:
        Settings.from_values(values)
    assert str(info.value).startswith("invalid settings: ")
    assert message in str(info.value)
    assert info.value.exit_code == ExitCode.CONFIG == 78


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        Settings.from_values({"timezone": "Nope", "concurrency": 0, "log_format": "xml"})
    text = str(info.value)
    assert "unknown time zone 'Nope'" in text
    assert "concurrency must be at least 1" in text
    assert "log format must be one of" in text
    assert text.count(";") == 2
