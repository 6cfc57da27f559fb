"""The command line's shared pieces: options, settings, error handling.

Every command module builds on this one and nothing here imports a command,
so there is no cycle. Each option that sets a `Settings` field shows that
field's default in its help, read from `Settings` itself: the default lives in
one place. Options default to None so that `Settings.from_values` can tell
"not given" from a value and fill in its own default.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from kcron import allowlist, signing
from kcron.errors import JobFileError, KcronError
from kcron.log import configure
from kcron.settings import LOG_FORMATS, LOG_LEVELS, Settings
from kcron.tracing import config_from_env

F = TypeVar("F", bound=Callable[..., Any])
# The commands that write or execute runs, and so may trace them.
TRACED_COMMANDS = ("produce", "consume", "backfill", "trigger", "dlq-requeue")


def option(*names: str, env: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option that also reads ``KCRON_<env>``."""
    return click.option(*names, envvar=f"KCRON_{env}", show_envvar=True, **kwargs)


def setting_default(field: str) -> Any:
    for f in dataclasses.fields(Settings):
        if f.name == field:
            return f.default
    raise KeyError(field)


def _shown(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def setting(
    *names: str, field: str, env: str, help: str, default_text: str | None = None, **kwargs: Any
) -> Callable[[F], F]:
    """An option for Settings.FIELD, its help ending with the field's default."""
    shown = default_text if default_text is not None else _shown(setting_default(field))
    return option(*names, env=env, help=f"{help}  [default: {shown}]", **kwargs)


topic_option = setting(
    "--topic",
    field="topic",
    env="TOPIC",
    help="Topic that carries runs: the default queue, for jobs without queue=; for a "
    "worker, the one queue it serves.",
)


signing_key_option = setting(
    "--signing-key-file",
    field="signing_key_file",
    env="SIGNING_KEY_FILE",
    type=click.Path(dir_okay=False, path_type=str),
    help="Sign the runs this command writes and, for a worker, refuse runs not signed with "
    "a key in this file (mode 600; docs/security.md).",
    default_text="unsigned",
)

allow_commands_option = setting(
    "--allow-commands",
    field="allow_commands",
    env="ALLOW_COMMANDS",
    type=click.Path(dir_okay=False, path_type=str),
    metavar="FILE",
    help="Run only commands matching a pattern in FILE: one regex a line, matched against "
    "the whole command line; shell=true jobs need 'shell:' patterns (docs/security.md).",
    default_text="any command",
)


def common_options(func: F) -> F:
    """Options every Kafka-facing command shares."""
    decorators = [
        setting(
            "--bootstrap-servers",
            field="bootstrap_servers",
            env="BOOTSTRAP_SERVERS",
            metavar="HOST:PORT[,...]",
            help="Kafka bootstrap servers.",
        ),
        topic_option,
        option(
            "-X",
            "--kafka-option",
            "kafka_options",
            env="KAFKA_OPTIONS",
            multiple=True,
            metavar="KEY=VALUE",
            help="Extra librdkafka property, e.g. -X security.protocol=SASL_SSL. Repeatable; "
            "in the env var, separate with spaces.",
        ),
        setting(
            "--log-format",
            field="log_format",
            env="LOG_FORMAT",
            type=click.Choice(LOG_FORMATS),
            help="Log as text lines or JSON objects.",
        ),
        setting(
            "--log-level",
            field="log_level",
            env="LOG_LEVEL",
            type=click.Choice(LOG_LEVELS, case_sensitive=False),
            help="Minimum level to log.",
        ),
        signing_key_option,
        setting(
            "--instance",
            field="instance",
            env="INSTANCE",
            help="Name on every log line.",
            default_text="supervisord's process name, else COMMAND-PID",
        ),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


class MetricsPort(click.ParamType[int, Any]):
    """``PORT``, or ``BASE+N`` (``9401+3`` is 9404): supervisord passes
    ``9401+%(process_num)d`` so that each process of a pool gets its own port."""

    name = "PORT|BASE+N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            port = value
        else:
            base, plus, offset = str(value).strip().partition("+")
            try:
                port = int(base) + (int(offset) if plus else 0)
            except ValueError:
                self.fail(f"'{value}' is not a port number or BASE+N (e.g. 9401+3)", param, ctx)
        if not 1 <= port <= 65535:
            self.fail(f"'{value}' gives port {port}, outside 1-65535", param, ctx)
        return port


def metrics_options(func: F) -> F:
    func = setting(
        "--metrics/--no-metrics",
        field="metrics",
        env="METRICS",
        default=None,
        help="Whether a given --metrics-port is served (false turns off the ports that "
        "supervisord and the image pass).",
        default_text="true",
    )(func)
    func = setting(
        "--broker-probe-interval",
        field="broker_probe_interval_s",
        env="BROKER_PROBE_INTERVAL",
        type=click.FloatRange(min=0.1),
        help="Seconds between broker probes (kcron_broker_up; the producer's queue lag).",
    )(func)
    func = setting(
        "--metrics-port-offset",
        field="metrics_port_offset",
        env="METRICS_PORT_OFFSET",
        type=click.IntRange(0, 65534),
        help="Added to --metrics-port: keeps kcron nodes sharing one host network apart.",
    )(func)
    func = setting(
        "--metrics-addr",
        field="metrics_addr",
        env="METRICS_ADDR",
        help="Address for --metrics-port (0.0.0.0 in a container).",
    )(func)
    return setting(
        "--metrics-port",
        field="metrics_port",
        env="METRICS_PORT",
        type=MetricsPort(),
        help="Serve Prometheus metrics on this port, or BASE+N (e.g. 9401+3 = 9404).",
    )(func)


metrics_max_jobs_option = setting(
    "--metrics-max-jobs",
    field="metrics_max_jobs",
    env="METRICS_MAX_JOBS",
    type=click.IntRange(1),
    help="Distinct job names a worker's metrics label; later ones count as _other.",
)


def partitions_option(func: F) -> F:
    return setting(
        "--partitions",
        field="partitions",
        env="PARTITIONS",
        type=click.IntRange(1),
        help="Partitions when creating a topic.",
    )(func)


def timezone_option(func: F) -> F:
    return setting(
        "--timezone",
        field="timezone",
        env="TIMEZONE",
        help="Zone the schedules are evaluated in (jobs may override with tz=).",
    )(func)


def jobs_option(func: F) -> F:
    return click.option(
        "--jobs",
        envvar="KCRON_JOBS",
        show_envvar=True,
        required=True,
        type=click.Path(dir_okay=False, path_type=str),
        help="The job file.",
    )(func)


def max_queues_option(func: F) -> F:
    return setting(
        "--max-queues",
        field="max_queues",
        env="MAX_QUEUES",
        type=click.IntRange(1),
        help="Most distinct queue= names a job file may hold.",
    )(func)


def schedule_options(func: F) -> F:
    """The job file and how its topics are created: shared by produce and backfill."""
    func = max_queues_option(timezone_option(func))
    func = setting(
        "--replication-factor",
        field="replication_factor",
        env="REPLICATION_FACTOR",
        type=click.IntRange(1),
        help="Replication factor when creating a topic (the default one and each queue's).",
    )(func)
    return jobs_option(partitions_option(func))


def session_timeout_option(help: str) -> Callable[[F], F]:
    return setting(
        "--session-timeout-ms",
        field="session_timeout_ms",
        env="SESSION_TIMEOUT_MS",
        type=click.IntRange(1),
        help=help,
    )


def parse_kafka_options(values: tuple[str, ...] | None) -> tuple[tuple[str, str], ...] | None:
    if not values:
        return None
    pairs = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{value}' is not KEY=VALUE", param_hint="-X/--kafka-option")
        pairs.append((key.strip(), val))
    return tuple(pairs)


def build_settings(
    command: str, values: dict[str, Any], *, log_to_stderr: bool = False
) -> Settings:
    """Defaults < env < flags, resolved once; then logging is configured from it.

    ``log_to_stderr`` keeps stdout for a command's own output (a listing, --json).
    """
    values = dict(values)
    values["kafka_options"] = parse_kafka_options(values.get("kafka_options"))
    if not values.get("instance"):
        values["instance"] = os.environ.get("SUPERVISOR_PROCESS_NAME") or f"{command}-{os.getpid()}"
    if command in TRACED_COMMANDS:
        # The standard OTEL_* environment, read once here (docs/monitoring.md#tracing).
        values["tracing"] = config_from_env(os.environ)
    settings = Settings.from_values(values)
    # A bad key file or allow-list fails here, before any connection, with exit 78.
    signing.load_optional(settings.signing_key_file)
    allowlist.load_optional(settings.allow_commands)
    stream = sys.stderr if log_to_stderr else None
    configure(settings.log_format, settings.log_level, settings.instance, stream=stream)
    return settings


def handle_errors(func: F) -> F:
    """Turn kcron's errors into a clear message and a named exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except JobFileError as exc:
            for err in exc.errors:
                click.echo(str(err), err=True)
            count = len(exc.errors)
            click.echo(f"kcron: {count} error{'s' if count != 1 else ''} in job file", err=True)
            sys.exit(exc.exit_code)
        except KcronError as exc:
            click.echo(f"kcron: error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]
