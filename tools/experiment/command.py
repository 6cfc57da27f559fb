"""``python -m tools.experiment``: the command line of ``make partitions-experiment``."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from kcron.errors import ConfigError, ExitCode, KcronError
from tools.experiment.report import summary_table, timing_table, write_report
from tools.experiment.runner import (
    DEFAULT_PARTITIONS,
    MIN_RUNS,
    CaseResult,
    Failed,
    plan,
    plural,
    run_experiment,
)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a list of numbers like \"1 2 3\"") from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter("give one or more partition counts, each at least 1")
    return values


@click.group("experiment")
def experiment_group() -> None:
    """Measured experiments on a real broker (dev tooling; needs requirements-dev.txt).

    Run from the repository root: python -m tools.experiment partitions ...
    """


@experiment_group.command("partitions")
@click.option(
    "--partitions",
    "partitions_text",
    default="1 2 3",
    show_default=True,
    metavar='"P ..."',
    help="Partition counts to compare (make: PARTITIONS).",
)
@click.option(
    "--consumers",
    type=click.IntRange(1, 20),
    default=2,
    show_default=True,
    help="Workers in the group for that sweep (make: CONSUMERS).",
)
@click.option(
    "--runs",
    type=click.IntRange(MIN_RUNS),
    default=MIN_RUNS,
    show_default=True,
    help="Runs backfilled per case.",
)
@click.option(
    "--extras/--no-extras",
    default=True,
    show_default=True,
    help="Also run the operator's cases: P=3 C=3, P=2 C=3, a worker stopped mid-run, "
    "a topic grown live.",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Where the .md and .png go.",
)
@click.option(
    "--bootstrap-servers",
    envvar="KCRON_BOOTSTRAP_SERVERS",
    show_envvar=True,
    metavar="HOST:PORT[,...]",
    help="An external cluster. Unset: a Kafka container (pulled when missing), else the "
    "dev broker image (built when missing), else the embedded broker.",
)
@click.option(
    "-X",
    "--kafka-option",
    "kafka_options",
    envvar="KCRON_KAFKA_OPTIONS",
    show_envvar=True,
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra librdkafka property for the workers and the backfill. Repeatable.",
)
@click.option(
    "--docker/--no-docker",
    envvar="KCRON_EXPERIMENT_DOCKER",
    show_envvar=True,
    default=True,
    show_default=True,
    help="Without an external cluster, try containers before the embedded broker.",
)
@click.option(
    "--keep-logs", is_flag=True, help="Keep the workers' log files (kept anyway on failure)."
)
def partitions_command(
    partitions_text: str,
    consumers: int,
    runs: int,
    extras: bool,
    report_dir: Path,
    bootstrap_servers: str | None,
    kafka_options: tuple[str, ...],
    docker: bool,
    keep_logs: bool,
) -> None:
    """What 1, 2 or 3 partitions do to a group of workers, measured on a real broker.

    For each case: a fresh topic, real `kcron consume` workers in one group,
    a backfill of RUNS runs keyed by fresh UUIDs, a wait until every run has
    executed. Prints the table and writes REPORT_DIR/partitions-experiment.md
    and .png. Exits 1 if a case lost or failed a run, or could not run.
    """
    try:
        _partitions(
            _int_list(partitions_text),
            consumers,
            runs,
            extras,
            report_dir,
            bootstrap_servers,
            kafka_options,
            docker,
            keep_logs,
        )
    except KcronError as exc:
        click.echo(f"kcron: error: {exc}", err=True)
        sys.exit(exc.exit_code)


def _rerun_line(partitions: tuple[int, ...], consumers: int, runs: int, extras: bool) -> str:
    """How to run this again, as the report says it."""
    listed = " ".join(map(str, partitions))
    rerun = f'python -m tools.experiment partitions --partitions "{listed}" --consumers {consumers}'
    rerun += f" --runs {runs}" + ("" if extras else " --no-extras")
    rerun = f"`{rerun}`"
    if (partitions, consumers, runs, extras) == (DEFAULT_PARTITIONS, 2, MIN_RUNS, True):
        rerun = f"`make partitions-experiment`, which runs {rerun}"
    return rerun


def _partitions(
    partitions: tuple[int, ...],
    consumers: int,
    runs: int,
    extras: bool,
    report_dir: Path,
    bootstrap_servers: str | None,
    kafka_options: tuple[str, ...],
    docker: bool,
    keep_logs: bool,
) -> None:
    import gc
    import importlib.util

    from kcron.log import configure
    from tools.brokers import select_broker

    if importlib.util.find_spec("matplotlib") is None:  # fail now, not after the measuring
        raise ConfigError("the chart needs matplotlib: pip install -r requirements-dev.txt")

    configure("text", "WARNING", "experiment", stream=sys.stderr)
    cases = plan(partitions, consumers, extras)
    workdir = Path(tempfile.mkdtemp(prefix="kcron-experiment-"))

    def say(text: str) -> None:
        click.echo(text, err=True)

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        info = stack.enter_context(
            select_broker(bootstrap_servers, str(workdir / "broker.log"), use_docker=docker)
        )
        say(f"broker: {info}")
        say(f"{plural(len(cases), 'case')}, {runs} runs each; worker logs in {workdir}")
        rows = run_experiment(
            info.bootstrap, cases, runs, kafka_options=kafka_options, workdir=workdir, progress=say
        )
        gc.collect()  # no Kafka client of ours may outlive the broker (librdkafka would log)
    elapsed = time.monotonic() - started
    rerun = _rerun_line(partitions, consumers, runs, extras)
    report, chart = write_report(rows, report_dir, str(info), runs, elapsed, rerun)
    click.echo(summary_table(rows))
    click.echo()
    click.echo(timing_table(rows))
    say(f"\nbroker: {info}; {plural(len(rows), 'case')} in {elapsed:.0f} s")
    say(f"report: {report}" + (f", chart: {chart}" if chart else ""))
    bad = [r for r in rows if isinstance(r, Failed) or (isinstance(r, CaseResult) and not r.ok)]
    if bad or keep_logs:
        say(f"worker logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if bad:
        say("kcron: error: " + "; ".join(f"{r.name} did not hold" for r in bad))
        sys.exit(ExitCode.FAILURE)
