"""Results to files: results.json, summary.md and kcron-vs-cron.png."""

# The summary is typeset for people: its en dashes and multiplication signs are meant.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# Issue 16's targets (round 2); P4's are round 1's.
TARGETS = {
    "p1_kcron_p99_s": 0.010,
    "p1_ratio_min": 100.0,
    "p2_kcron_p99_s": 0.7,
    "p2_ratio_min": 5.0,
    "p3_ratio_min": 0.80,
    "metrics_cost_max": 0.05,
    "p4_parse_s": 5.0,
    "p4_rss_mib": 300.0,
    "p4_delivery_s": 1.0,
}
CHART = "kcron-vs-cron.png"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def dur(seconds: Any) -> str:
    if not _finite(seconds):
        return "n/a"
    if abs(seconds) < 1:
        return f"{seconds * 1000:.0f} ms" if abs(seconds) >= 0.010 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fig(spread: dict[str, Any], fmt: Any = dur) -> str:
    """median [min–max] over repeats."""
    if not spread or not spread.get("n"):
        return "n/a"
    if spread["n"] == 1:
        return str(fmt(spread["median"]))
    return f"{fmt(spread['median'])} [{fmt(spread['min'])}–{fmt(spread['max'])}]"


def ratio(value: Any) -> str:
    return f"{value:.1f}×" if _finite(value) else "n/a"


def pct(value: Any) -> str:
    return f"{100 * value:.0f} %" if _finite(value) else "n/a"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the figure it is judged on (medians over repeats)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, figure: str, value: Any, met: bool | None) -> None:
        rows.append({"target": name, "measured": figure, "value": value, "met": met})

    def med(spread: dict[str, Any] | None) -> Any:
        return spread.get("median") if spread and spread.get("n") else None

    for key, phase, limit in (("p1", "P1", "p1_kcron_p99_s"), ("p2", "P2", "p2_kcron_p99_s")):
        res = results.get(key)
        if not res:
            continue
        kp99 = med(res["schedulers"]["kcron"]["p99"])
        cp99 = med(res["schedulers"]["cron"]["p99"])
        add(
            f"{phase}: kcron p99 ≤ {dur(TARGETS[limit])}",
            dur(kp99),
            kp99,
            _finite(kp99) and kp99 <= TARGETS[limit],
        )
        r = med(res["cron_p99_over_kcron_p99"])
        least = TARGETS[f"{key}_ratio_min"]
        add(
            f"{phase}: kcron p99 ≥ {least:.0f}× better than cron's, same run "
            f"(cron p99 {dur(cp99)})",
            ratio(r),
            r,
            _finite(r) and r >= least,
        )
    p3 = results.get("p3")
    if p3:
        r = med(p3["share_of_limit"])
        add(
            "P3: ≥ 80 % of the machine's spawn limit",
            pct(r),
            r,
            _finite(r) and r >= TARGETS["p3_ratio_min"],
        )
        cost = p3.get("metrics_cost")
        if cost is not None:
            add(
                "Metrics cost < 5 % (P3 runs/s, metrics off vs on)",
                pct(cost),
                cost,
                _finite(cost) and cost < TARGETS["metrics_cost_max"],
            )
    p4 = results.get("p4")
    if p4:
        for label, key, limit, fmt in (
            ("P4: `kcron check` ≤ 5 s", "check_s", "p4_parse_s", dur),
            ("P4: producer start-up (parse + schedule) ≤ 5 s", "startup_s", "p4_parse_s", dur),
            ("P4: `kcron check` peak RSS ≤ 300 MB", "check_rss_mib", "p4_rss_mib", mib),
            ("P4: producer peak RSS ≤ 300 MB", "producer_rss_mib", "p4_rss_mib", mib),
            (
                "P4: last due run delivered ≤ 1 s after the minute",
                "last_delivered_s",
                "p4_delivery_s",
                dur,
            ),
        ):
            value = med(p4.get(key))
            add(label, fmt(value), value, _finite(value) and value <= TARGETS[limit])
    return rows


def mib(value: Any) -> str:
    return f"{value:.0f} MiB" if _finite(value) else "n/a"


def _latency_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| scheduler | first start | p50 | p99 | max | missing runs |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("kcron", "cron"):
        s = res["schedulers"][name]
        lines.append(
            f"| {name} | {fig(s['first'])} | {fig(s['p50'])} | {fig(s['p99'])} | "
            f"{fig(s['max'])} | {s['missing']} |"
        )
    return lines


def _per_minute(res: dict[str, Any]) -> list[str]:
    lines = [
        "| minute (UTC) | scheduler | runs | p50 | p99 | max | load average |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = []
    for name in ("kcron", "cron"):
        for r in res["schedulers"][name]["repeats"]:
            rows.append((r["minute"], name, r))
    for minute, name, r in sorted(rows, key=lambda x: (x[0], x[1])):
        load = " ".join(f"{x:.2f}" for x in r.get("load_average") or [])
        lines.append(
            f"| {minute} | {name} | {r['n']} | {dur(r['p50'])} | {dur(r['p99'])} | "
            f"{dur(r['max'])} | {load} |"
        )
    return lines


def _md_header(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    k = results["kcron"]
    cfg = results["config"]
    out = [
        f"# kcron vs cron: {'quick ' if cfg['quick'] else ''}benchmark results",
        "",
        f"- **Machine**: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}, "
        f"Linux {m['kernel']}, Python {m['python']}",
        f"- **Broker**: {m['broker']}; **cron**: {results.get('cron_version', 'n/a')}",
        f"- **kcron**: commit {k['commit']}, 1 producer + {cfg['consumers']} consumers "
        f"started by {cfg['launcher']} as `make run` does; defaults "
        + ", ".join(f"{n}={v}" for n, v in k["defaults"].items())
        + "; the bench sets "
        + ", ".join(f"`{n}={v}`" for n, v in cfg["kcron_env"].items()),
        f"- **Run**: {results['started']}, {results['elapsed_s'] / 60:.1f} min, "
        f"layout `{cfg['layout']}`; load average (1/5/15 min) at start "
        f"{results['load_average']['start']}, at end {results['load_average']['end']}",
        "- Lateness = the time the job's own process recorded at start (`date +%s.%N`) minus "
        "the minute it was due; both schedulers run the same command line. Figures are the "
        "median over repeats (measured minutes) with [min–max].",
        "",
    ]
    return out


def _md_latency(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, title in (("p1", "P1 precision (light load)"), ("p2", "P2 herd")):
        res = results.get(key)
        if not res:
            continue
        reps = len(res["schedulers"]["kcron"]["repeats"])
        out += [f"## {title}: {res['jobs']} jobs due the same minute, {reps} minute(s) each", ""]
        out += _latency_table(res)
        out += [
            "",
            f"cron p99 / kcron p99, pairing the minutes of the same run: "
            f"**{fig(res['cron_p99_over_kcron_p99'], ratio)}**",
            "",
        ]
        out += [
            "<details><summary>per minute</summary>",
            "",
            *_per_minute(res),
            "",
            "</details>",
            "",
        ]
    return out


def _md_p3(results: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    out: list[str] = []
    p3 = results.get("p3")
    if not p3:
        return out
    per_s = lambda v: f"{v:,.0f}/s"  # noqa: E731
    out += [
        f"## P3 throughput: {p3['runs']} backfilled runs of `true`, {cfg['consumers']} consumers",
        "",
        "| repeat | metrics | spawn limit (best of: subprocess.run / posix_spawn / xargs -P)"
        " | kcron runs/s end to end | share of the limit | backfill took | load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in p3["repeats"]:
        lim = r.get("spawn_limit")
        limit = "not measured"
        if lim:
            each = " / ".join(f"{m['per_s']:.0f}" for m in lim["methods"].values())
            limit = f"**{lim['per_s']:.0f}** ({each})"
        on = {True: "on", False: "off", None: "?"}[r.get("metrics")]
        out.append(
            f"| {r['repeat']} | {on} | {limit} | {r['runs_per_s']:.0f} | "
            f"{pct(r.get('share_of_limit'))} | {dur(r['backfill_s'])} | "
            f"{' '.join(f'{x:.2f}' for x in r['load_average'])} |"
        )
    methods = p3.get("spawn_methods_per_s") or {}
    out += [
        "",
        f"Median: kcron {fig(p3['runs_per_s'], per_s)} vs the spawn limit "
        f"{fig(p3['spawn_limit_per_s'], per_s)} ("
        + ", ".join(f"{name} {fig(v, per_s)}" for name, v in methods.items())
        + f"): **{fig(p3['share_of_limit'], pct)}** of the limit.",
        "",
    ]
    if p3.get("metrics_cost") is not None:
        out += [
            f"Metrics on (served and scraped every 5 s) "
            f"{fig(p3['metrics_on_runs_per_s'], per_s)}, off "
            f"{fig(p3['metrics_off_runs_per_s'], per_s)}: metrics cost "
            f"**{pct(p3['metrics_cost'])}** of the throughput (medians; negative: "
            "faster with them, i.e. within the noise).",
            "",
        ]
    return out


def tracing_line(results: dict[str, Any]) -> str | None:
    """ "tracing off: N ns per run (7 hooks) vs 0": bench/tracing_cost.py's figure."""
    t = results.get("tracing")
    if not t:
        return None
    return (
        f"tracing off: {t['cost_off_ns']:.0f} ns per run ({t['hooks']} hook calls, "
        f"{t['off_ns']:.0f} ns with the loop) vs 0 without hooks "
        f"({t['no_hooks_ns']:.0f} ns; best of {t['repeat']} rounds of {t['runs']:,} runs)"
    )


def _md_tracing(results: dict[str, Any]) -> list[str]:
    line = tracing_line(results)
    if line is None:
        return []
    return [
        "## Tracing overhead",
        "",
        f"**{line}**. The bench sets no `OTEL_*` variable, so every figure above is "
        "measured with tracing off; this is what its hooks cost each run then "
        "(`python -m bench.tracing_cost` adds the cost with tracing on).",
        "",
    ]


def _md_p4(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    p4 = results.get("p4")
    if p4:
        out += [
            f"## P4 scale: a generated {p4['jobs']:,}-job file",
            "",
            "| figure | median [min–max] |",
            "|---|---|",
            f"| `kcron check FILE` wall time | {fig(p4['check_s'])} |",
            f"| `kcron check` peak RSS | {fig(p4['check_rss_mib'], mib)} |",
            f"| producer: start → file parsed + broker reached | {fig(p4['parse_s'])} |",
            f"| producer: start → schedule built (ready) | {fig(p4['startup_s'])} |",
            f"| producer peak RSS | {fig(p4['producer_rss_mib'], mib)} |",
            f"| runs due at the measured minute | {fig(p4['due'], lambda v: f'{v:.0f}')} |",
            f"| minute → first due run delivered | {fig(p4['first_delivered_s'])} |",
            f"| minute → last due run delivered | {fig(p4['last_delivered_s'])} |",
            "",
            "Delivery times are relative to the minute the runs were due: negative means "
            "acknowledged by Kafka before it (the producer dispatches runs up to "
            "`KCRON_DISPATCH_AHEAD_S` early and the workers hold them until due). The "
            "producer's start-up includes parsing the file, reaching the broker and "
            "building the schedule.",
            "",
        ]
        if p4.get("note"):
            out += [p4["note"], ""]
    return out


def markdown(results: dict[str, Any], chart: str | None) -> str:
    out = [*_md_header(results), *_md_latency(results), *_md_p3(results)]
    out += [*_md_tracing(results), *_md_p4(results)]
    out += ["## Targets", "", "| target | measured (median) | met |", "|---|---|---|"]
    for row in results["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        out.append(f"| {row['target']} | {row['measured']} | {met} |")
    out.append("")
    if chart:
        out += [f"![kcron vs cron]({chart})", ""]
    out += [f"Reproduce: `{results['command']}`", ""]
    return "\n".join(out)


def readme_table(results: dict[str, Any]) -> str:
    """The README's kcron-vs-cron table, from one run's results."""
    compat(results)
    rows = ["| | kcron | cron, same run | target | met |", "|---|---|---|---|---|"]
    met = {r["target"]: r["met"] for r in results.get("targets") or targets(results)}

    def yes(*names: str) -> str:
        found = [met.get(n) for n in names]
        return "yes" if all(found) else "**no**"

    for key, title, limit in (
        ("p1", "P1 precision", "p1_kcron_p99_s"),
        ("p2", "P2 herd", "p2_kcron_p99_s"),
    ):
        res = results.get(key)
        if not res:
            continue
        n = len(res["schedulers"]["kcron"]["repeats"])
        cells = []
        for name in ("kcron", "cron"):
            s = res["schedulers"][name]
            cells.append(
                f"{dur(s['first']['median'])} / {dur(s['p50']['median'])} / "
                f"**{fig(s['p99'])}** / {dur(s['max']['median'])}"
            )
        r = res["cron_p99_over_kcron_p99"]
        rows.append(
            f"| **{title}**: {res['jobs']:,} jobs due the same minute ({n} minutes each): "
            f"first / p50 / **p99** / max | {cells[0]} | {cells[1]} | kcron p99 ≤ "
            f"{dur(TARGETS[limit])}, ≥ {TARGETS[key + '_ratio_min']:.0f}× better than cron | "
            f"{yes(*[t for t in met if t.startswith(key.upper() + ': kcron')])}: cron p99 / "
            f"kcron p99 = {fig(r, ratio)} |"
        )
    p3 = results.get("p3")
    if p3:
        rows.append(
            f"| **P3** throughput: {p3['runs']:,} runs of `true`, 2 consumers, end to end | "
            f"**{fig(p3['runs_per_s'], lambda v: f'{v:.0f} runs/s')}** | the machine's spawn "
            f"limit: {fig(p3['spawn_limit_per_s'], lambda v: f'{v:,.0f}/s')} | ≥ 80 % of the "
            f"limit | {yes(*[t for t in met if t.startswith('P3')])}: "
            f"{fig(p3['share_of_limit'], pct)} |"
        )
        if p3.get("metrics_cost") is not None:
            rows.append(
                f"| **Overhead**: P3 with metrics on / off | "
                f"{fig(p3['metrics_on_runs_per_s'], lambda v: f'{v:.0f}')} / "
                f"{fig(p3['metrics_off_runs_per_s'], lambda v: f'{v:.0f} runs/s')} | | "
                f"< 5 % | {yes(*[t for t in met if t.startswith('Metrics')])}: "
                f"{pct(p3['metrics_cost'])} |"
            )
    tracing = results.get("tracing")
    if tracing:
        rows.append(
            f"| **Overhead**: tracing off, per run ({tracing['hooks']} hook calls) | "
            f"{tracing['cost_off_ns']:.0f} ns | | | |"
        )
    p4 = results.get("p4")
    if p4:
        rows.append(
            f"| **P4** `kcron check` on {p4['jobs']:,} jobs: time / peak RSS | "
            f"{fig(p4['check_s'])} / {fig(p4['check_rss_mib'], mib)} | | ≤ 5 s / ≤ 300 MB | "
            f"time {yes('P4: `kcron check` ≤ 5 s')}, RSS "
            f"{yes('P4: `kcron check` peak RSS ≤ 300 MB')} |"
        )
        rows.append(
            f"| **P4** producer start-up: file parsed / ready to dispatch / peak RSS | "
            f"{fig(p4['parse_s'])} / {fig(p4['startup_s'])} / {fig(p4['producer_rss_mib'], mib)}"
            f" | | ≤ 5 s / ≤ 300 MB | time "
            f"{yes('P4: producer start-up (parse + schedule) ≤ 5 s')}, RSS "
            f"{yes('P4: producer peak RSS ≤ 300 MB')} |"
        )
        rows.append(
            f"| **P4** last of the {fig(p4['due'], lambda v: f'{v:,.0f}')} runs due at a minute "
            f"acknowledged by Kafka, relative to the minute (first one) | "
            f"{fig(p4['last_delivered_s'])} ({fig(p4['first_delivered_s'])}) | | ≤ 1 s after | "
            f"{yes('P4: last due run delivered ≤ 1 s after the minute')} |"
        )
    return "\n".join(rows)


# One colour per scheduler, in every panel.
COLORS = {"kcron": "#1f77b4", "cron": "#d62728"}


def _latency_panel(ax: Any, results: dict[str, Any], key: str, title: str) -> None:
    res = results.get(key)
    if not res:
        ax.set_axis_off()
        return
    for name in ("kcron", "cron"):
        data = [max(v, 1e-4) for v in res["samples"][name]]
        if not data:
            continue
        ys = [(i + 1) / len(data) for i in range(len(data))]
        ax.step(data, ys, where="post", color=COLORS[name], label=f"{name} (n={len(data)})")
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 20)
    ax.set_xlabel("lateness: job start − scheduled minute (s, log scale)")
    ax.set_ylabel("fraction of runs started")
    ax.set_title(f"{title}: {res['jobs']} jobs due the same minute")
    ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    limit = TARGETS["p1_kcron_p99_s" if key == "p1" else "p2_kcron_p99_s"]
    ax.axvline(limit, color="green", ls="--", lw=1, label=f"target: kcron p99 ≤ {dur(limit)}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)


def _p3_panel(ax: Any, results: dict[str, Any]) -> None:
    p3 = results.get("p3")
    if p3:
        names = ["spawn limit\n(best of 3, every core)", "kcron\n(2 consumers, end to end)"]
        lim, runs = p3["spawn_limit_per_s"], p3["runs_per_s"]
        meds = [lim["median"], runs["median"]]
        lows = [meds[0] - lim["min"], meds[1] - runs["min"]]
        highs = [lim["max"] - meds[0], runs["max"] - meds[1]]
        bars = ax.bar(
            names, meds, yerr=[lows, highs], color=["#7f7f7f", COLORS["kcron"]], capsize=6
        )
        ax.bar_label(bars, labels=[f"{v:.0f}/s" for v in meds], padding=3)
        ax.margins(y=0.12)
        ax.axhline(0.8 * meds[0], color="green", ls="--", lw=1, label="target: 80 % of the limit")
        ax.set_ylabel("processes started per second")
        ax.set_title(
            f"P3 throughput: {p3['runs']} runs of `true` "
            f"({pct(p3['share_of_limit']['median'])} of the limit)"
        )
        ax.legend()
    else:
        ax.set_axis_off()


def _p4_panel(ax: Any, results: dict[str, Any]) -> None:
    p4 = results.get("p4")
    if p4:
        labels = ["kcron check", "producer\nstart-up", "last run of the\nminute delivered"]
        keys = ["check_s", "startup_s", "last_delivered_s"]
        limits = [5.0, 5.0, 1.0]
        meds = [p4[k]["median"] if p4[k]["n"] else 0 for k in keys]
        bars = ax.bar(labels, meds, color=COLORS["kcron"])
        ax.bar_label(bars, labels=[dur(v) for v in meds], padding=2)
        ax.margins(y=0.12)
        for bar, limit in zip(bars, limits, strict=True):
            x = bar.get_x()
            ax.hlines(limit, x, x + bar.get_width(), color="green", ls="--", lw=1.5)
        ax.set_ylabel("seconds (dashed: target)")
        ax.set_title(
            f"P4 scale: {p4['jobs']:,} jobs; peak RSS check "
            f"{mib(p4['check_rss_mib']['median'])}, producer "
            f"{mib(p4['producer_rss_mib']['median'])}"
        )
    else:
        ax.set_axis_off()


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig_, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for ax, key, title in ((axes[0][0], "p1", "P1 precision"), (axes[0][1], "p2", "P2 herd")):
        _latency_panel(ax, results, key, title)
    _p3_panel(axes[1][0], results)
    _p4_panel(axes[1][1], results)
    m = results["machine"]
    fig_.suptitle(
        f"kcron vs Debian cron, same run — {m['cores']} cores, Python {m['python']}, "
        f"{m['broker'].split(',')[0]}",
        fontsize=11,
    )
    fig_.tight_layout()
    fig_.savefig(path, dpi=110)
    plt.close(fig_)
    return True


def _clean(value: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def compat(results: dict[str, Any]) -> dict[str, Any]:
    """Results written before 2026-12-01 10:30 compared P3 with one ``subprocess.run``
    loop per core ("raw"): read them as a spawn limit of that one method."""
    p3 = results.get("p3")
    if p3 and "raw_per_s" in p3 and "spawn_limit_per_s" not in p3:
        p3["spawn_limit_per_s"] = p3["raw_per_s"]
        p3["spawn_methods_per_s"] = {"subprocess.run": p3["raw_per_s"]}
        p3["share_of_limit"] = p3["ratio_to_raw"]
        for row in p3["repeats"]:
            raw = row.get("raw_spawn")
            row.setdefault("metrics", None)
            row.setdefault("share_of_limit", row.get("ratio_to_raw"))
            row.setdefault(
                "spawn_limit", raw and {"per_s": raw["per_s"], "methods": {"subprocess.run": raw}}
            )
    return results


def write(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    compat(results)
    results["targets"] = targets(results)
    paths = {"json": out_dir / "results.json", "summary": out_dir / "summary.md"}
    drawn = chart(results, out_dir / CHART)
    if drawn:
        paths["chart"] = out_dir / CHART
    paths["json"].write_text(json.dumps(_clean(results), indent=2, default=str) + "\n")
    paths["summary"].write_text(markdown(results, CHART if drawn else None))
    return paths
