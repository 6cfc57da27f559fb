"""The partitions experiment's tables, Markdown report and chart."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kcron import __version__
from tools.experiment.runner import (
    CONCURRENCY,
    FAST_COMMAND,
    REPORT_NAME,
    SESSION_TIMEOUT_MS,
    SLOW_COMMAND,
    WINDOW_START,
    CaseResult,
    ConsumerResult,
    Failed,
    Recovery,
    Row,
    Skipped,
    fmt_parts,
    job_line,
)


def _consumer_cell(c: ConsumerResult) -> str:
    if c.stopped:
        owned = f"{fmt_parts(c.partitions)}, stopped"
    elif c.final_partitions != c.partitions:
        owned = f"{fmt_parts(c.partitions)} → {fmt_parts(c.final_partitions)}"
    else:
        owned = fmt_parts(c.partitions) if c.partitions else "idle"
    return f"{c.name} [{owned}]: {c.runs}"


_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _count(n: int, noun: str) -> str:
    word = _WORDS[n] if n < len(_WORDS) else str(n)
    return f"{word} {noun}{'' if n == 1 else 's'}"


def verdict(result: CaseResult) -> str:
    """What the case shows, in plain words."""
    if result.recovery is not None:
        return _recovery_verdict(result, result.recovery)
    if result.grown_from is not None and result.runs_after_growth is not None:
        new = list(range(result.grown_from, result.partitions))
        after = result.runs_after_growth
        got = sum(after.get(p, 0) for p in new)
        return (
            f"new partition {fmt_parts(new)} took {got} of the {sum(after.values())} runs sent "
            "after the change; runs sent before stayed where they were"
        )
    return _share_verdict(result)


def _recovery_verdict(result: CaseResult, rec: Recovery) -> str:
    survivors = "/".join(c.name for c in result.consumers if not c.stopped)
    first = f"SIGTERM to {rec.stopped} after {rec.runs_before_stop} of {result.runs} runs"
    if rec.in_flight:
        first += ", mid-run"
    parts = [first]
    if rec.in_flight_finished:
        parts.append("it finished its run and left")
    if rec.reassigned_s is not None:
        parts.append(
            f"{survivors} owned {fmt_parts(range(result.partitions))} "
            f"{rec.reassigned_s:.1f} s after the signal"
        )
    else:
        parts.append(f"{survivors} never owned every partition")
    if rec.resumed_s is not None:
        parts.append(f"first moved run at {rec.resumed_s:.1f} s")
    return "; ".join(parts)


def _share_verdict(result: CaseResult) -> str:
    notes = []
    idle = [c.name for c in result.consumers if c.idle]
    if idle:
        notes.append(f"{_count(len(idle), 'consumer')} idle ({', '.join(idle)})")
    for c in result.consumers:
        if len(c.partitions) > 1:
            notes.append(f"{c.name} takes {_count(len(c.partitions), 'partition')}")
    if not idle and all(len(c.partitions) == 1 for c in result.consumers):
        notes.append("an even split: one partition each")
    if len(result.busy) == 1 and len(result.consumers) > 1:
        notes.append(f"{result.busy[0].name} did all the work")
    return "; ".join(notes)


def _once_cell(result: CaseResult) -> str:
    if result.exactly_once:
        return "yes"
    bits = []
    if result.lost:
        bits.append(f"{result.lost} LOST")
    if result.duplicates:
        bits.append(f"{result.duplicates} duplicate{'s' if result.duplicates != 1 else ''}")
    if result.failed:
        bits.append(f"{result.failed} failed")
    return "no: " + ", ".join(bits)


SUMMARY_HEADER = (
    "Case",
    "P",
    "C",
    "Consumer [partitions]: runs",
    "Runs per partition",
    "Executed",
    "Exactly once",
    "What it shows",
)


def summary_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = []
    for row in rows:
        if isinstance(row, CaseResult):
            per_partition = " · ".join(f"p{p}: {n}" for p, n in row.runs_by_partition.items())
            table.append(
                (
                    row.name,
                    str(row.partitions),
                    str(len(row.consumers)),
                    " · ".join(_consumer_cell(c) for c in row.consumers),
                    per_partition,
                    f"{row.executed}/{row.runs}",
                    _once_cell(row),
                    verdict(row),
                )
            )
        elif isinstance(row, Skipped):
            table.append(
                (
                    row.name,
                    str(row.partitions),
                    str(row.consumers),
                    "—",
                    "—",
                    "—",
                    "—",
                    f"skipped: {row.reason.split(' (')[0]}",
                )
            )
        else:
            first = row.error.splitlines()[0] if row.error else "failed"
            table.append(
                (row.name, str(row.partitions), str(row.consumers), "—", "—", "—", "FAILED", first)
            )
    return table


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                str(c).replace("|", "\\|").ljust(w) for c, w in zip(cells, widths, strict=True)
            )
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def summary_table(rows: Sequence[Row]) -> str:
    return markdown_table(SUMMARY_HEADER, summary_rows(rows))


def timing_table(rows: Sequence[Row]) -> str:
    header = ("Case", "Group stable after", "All runs done after", "Recovery after SIGTERM")
    table = []
    for row in rows:
        if not isinstance(row, CaseResult):
            continue
        recovery = "—"
        if row.recovery is not None:
            rec = row.recovery
            recovery = (
                f"{rec.stopped} left {_s(rec.exited_s)}; survivor revoked for the rebalance "
                f"{_s(rec.noticed_s)}; owned every partition {_s(rec.reassigned_s)}; "
                f"first run of partition {fmt_parts(rec.moved_partitions)} {_s(rec.resumed_s)}"
            )
        table.append((row.name, f"{row.group_stable_s:.1f} s", f"{row.drain_s:.1f} s", recovery))
    return markdown_table(header, table)


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _panel(ax: Any, result: CaseResult, colors: Sequence[Any]) -> None:
    """One case: a bar per consumer, stacked by partition, its total on top."""
    labels = [c.name + (" ✕" if c.stopped else "") for c in result.consumers]
    bottoms = [0] * len(result.consumers)
    for p in range(result.partitions):
        heights = [c.runs_by_partition.get(p, 0) for c in result.consumers]
        ax.bar(
            labels,
            heights,
            bottom=bottoms,
            color=colors[p % len(colors)],
            label=f"partition {p}",
            edgecolor="white",
            linewidth=0.5,
        )
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for x, total in enumerate(bottoms):
        text = str(total) if total else "0\nidle"
        ax.text(x, total, text, ha="center", va="bottom", fontsize=8)
    title = f"P={result.partitions}, C={len(result.consumers)}"
    if result.recovery is not None:
        title += "\none stopped (✕)"
    elif result.grown_from is not None:
        title = f"P={result.grown_from}→{result.partitions}, C={len(result.consumers)}\ngrown live"
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)


def write_chart(rows: Sequence[Row], path: Path) -> Path | None:
    """Runs per consumer, one panel per case, each bar stacked by partition."""
    results = [r for r in rows if isinstance(r, CaseResult)]
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    most = max(r.partitions for r in results)
    colors = [plt.get_cmap("tab10")(i) for i in range(10)]
    width = max(6.0, 2.1 * len(results))
    fig, axes = plt.subplots(1, len(results), figsize=(width, 4.2), sharey=True, squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        _panel(ax, result, colors)
    axes[0][0].set_ylabel("runs executed")
    handles = [Rectangle((0, 0), 1, 1, color=colors[p % len(colors)]) for p in range(most)]
    fig.legend(
        handles,
        [f"partition {p}" for p in range(most)],
        loc="upper center",
        ncol=most,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        f"kcron: runs per consumer, stacked by partition ({results[0].runs} runs per case)",
        y=0.02,
        fontsize=9,
        va="bottom",
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.92))
    tmp = path.with_suffix(".png.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def _consumer_rows(results: Sequence[CaseResult]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in results:
        for c in r.consumers:
            by_part = " · ".join(f"p{p}: {n}" for p, n in c.runs_by_partition.items()) or "—"
            final = fmt_parts(c.final_partitions) if not c.stopped else "stopped"
            rows.append(
                (
                    r.name,
                    c.name,
                    fmt_parts(c.partitions),
                    final,
                    str(c.runs),
                    by_part,
                    str(c.exit_code),
                )
            )
    return rows


def _header(
    broker: str, runs: int, when: datetime, elapsed_s: float, command_line: str
) -> list[str]:
    return [
        "# What partitions do: measured",
        "",
        f"- Date: {when.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Broker: {broker}",
        f"- kcron {__version__}, Python {platform.python_version()}, {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} CPUs; took {elapsed_s:.0f} s",
        f"- Each case: a fresh topic with P partitions, C `kcron consume` workers in a new group "
        f"(concurrency {CONCURRENCY}, session timeout {SESSION_TIMEOUT_MS} ms), "
        f"a backfill of {runs} runs of "
        f"`{job_line(FAST_COMMAND)}` (one a minute from "
        f"{WINDOW_START.strftime('%Y-%m-%dT%H:%MZ')}), each keyed by a fresh UUID. The stopped-"
        f"worker case runs `{SLOW_COMMAND}` so that runs are in flight when SIGTERM arrives.",
        '- Counted from the workers\' own JSON log lines ("partitions assigned", "run started", '
        '"run succeeded"), never from offsets: a run is identified by its run id.',
        f"- Rerun: {command_line}",
        "",
    ]


def _tables(rows: Sequence[Row], chart: str | None) -> list[str]:
    results = [r for r in rows if isinstance(r, CaseResult)]
    lines = ["## Result", "", summary_table(rows), ""]
    if chart:
        lines += [f"![Runs per consumer, stacked by partition]({chart})", ""]
    consumer_header = (
        "Case",
        "Consumer",
        "Partitions",
        "At the end",
        "Runs",
        "Runs by partition",
        "Exit code",
    )
    lines += [
        "## Per consumer",
        "",
        "Partitions owned once the group was stable (before any run arrived) and at the end.",
        "",
        markdown_table(consumer_header, _consumer_rows(results)),
        "",
        "## Timing",
        "",
        timing_table(rows),
        "",
    ]
    return lines


_NOTES = [
    "## Notes",
    "",
    "- Runs spread because the key is a fresh UUID per run: the producer's partitioner hashes "
    "it (librdkafka's default `consistent_random` uses CRC32; Java clients use murmur2), so "
    "each partition gets about 1/P of the runs. A per-job key would send every run of a job "
    "to one partition, so one worker would run that job forever, and the others none of it.",
    "- Within a group a partition has exactly one owner, so workers beyond the partition count "
    "are idle standbys, and a worker with two partitions does the work of two.",
    "- Adding partitions to a live topic (`kafka-topics --alter --partitions N`): the group "
    "rebalances and the new partitions get a share of the runs sent afterwards. Runs already "
    "queued stay where they are. With UUID keys nothing else changes; with per-job keys a "
    "job would move to another partition, so its next run could start before the previous "
    "one, still queued on the old partition, has run. Kafka cannot remove partitions.",
]


def _recovery_note(result: CaseResult) -> str | None:
    rec = result.recovery
    if rec is None or rec.noticed_s is None or rec.reassigned_s is None:
        return None
    return (
        f"- Recovery ({result.name}): the survivor learnt of the rebalance at its next "
        f"heartbeat, {rec.noticed_s:.1f} s after the signal (heartbeat.interval.ms is "
        f"session.timeout/10: {SESSION_TIMEOUT_MS // 10} ms here, 4.5 s with kcron's default "
        f"45 s session timeout); the broker completed the rejoin "
        f"{rec.reassigned_s - rec.noticed_s:.1f} s later (the dev broker holds a join for "
        "about session.timeout/2; Kafka completes it once the remaining members rejoined)"
        + (
            f"; the first run of the moved partition started "
            f"{rec.resumed_s - rec.reassigned_s:.1f} s after that, behind the runs the "
            "survivor had fetched first from its own partition"
            if rec.resumed_s is not None
            else ""
        )
        + ". A worker killed with SIGKILL (not measured here) leaves no LeaveGroup: its "
        "partitions move only after session.timeout, and the run it had in flight runs "
        "again elsewhere (at-least-once)."
    )


def _notes(rows: Sequence[Row]) -> list[str]:
    lines = list(_NOTES)
    for result in rows:
        note = _recovery_note(result) if isinstance(result, CaseResult) else None
        if note is not None:
            lines.append(note)
    for skipped in rows:
        if isinstance(skipped, Skipped):
            lines.append(f"- Skipped here: {skipped.name}: {skipped.reason}.")
    for failed in rows:
        if isinstance(failed, Failed):
            lines += ["", f"### FAILED: {failed.name}", "", "```", failed.error, "```"]
    return lines


def render_report(
    rows: Sequence[Row],
    broker: str,
    runs: int,
    when: datetime,
    elapsed_s: float,
    chart: str | None,
    command_line: str,
) -> str:
    lines = [
        *_header(broker, runs, when, elapsed_s, command_line),
        *_tables(rows, chart),
        *_notes(rows),
    ]
    return "\n".join(lines) + "\n"


def write_report(
    rows: Sequence[Row],
    report_dir: Path,
    broker: str,
    runs: int,
    elapsed_s: float,
    command_line: str = "`make partitions-experiment`",
    when: datetime | None = None,
) -> tuple[Path, Path | None]:
    """Write ``REPORT_NAME.md`` and ``REPORT_NAME.png`` into ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    chart = write_chart(rows, report_dir / f"{REPORT_NAME}.png")
    text = render_report(
        rows,
        broker,
        runs,
        when or datetime.now(UTC),
        elapsed_s,
        chart.name if chart else None,
        command_line,
    )
    path = report_dir / f"{REPORT_NAME}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path, chart


# -- command line ---------------------------------------------------------------
