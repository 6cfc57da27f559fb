#!/usr/bin/env python3
"""Render kcron's consumer pools, one per queue, for supervisord.

supervisord's configuration is static, so the pools named by one setting
are written into a file that etc/supervisord.conf includes, before
supervisord starts (etc/run-local.sh for `make run`, containers/entrypoint.sh
in the image):

    KCRON_QUEUES="kcron.jobs=2 cluster-a=2 cluster-b=1"

means 2 workers on the default queue (KCRON_TOPIC, kcron.jobs unless set),
2 on cluster-a and 1 on cluster-b.  The default queue's pool is the static
[program:kcron-consumer] of supervisord.conf (kcron-consumer-00, -01...:
numprocs=KCRON_CONSUMERS), so this script prints the count for it and the
launcher exports it as KCRON_CONSUMERS.  Every other queue gets a copy of
that section, `kcron consume --topic NAME`, processes named
kcron-consumer-NAME-00, -01...: one source for the stop timeouts and log
settings of every pool.

How the settings combine: KCRON_QUEUES, when set and not blank, is the whole
list; a queue it does not name gets no worker on this node (that is how a
consumer-only node serves just its queues), and KCRON_CONSUMERS is ignored.
Unset or blank: one pool, KCRON_CONSUMERS (default 2) workers on the default
queue, as before queues existed.

    render-pools.py --conf etc/supervisord.conf --out RUN_DIR/pools.conf
        writes the file, prints the default pool's count on stdout and the
        pools on stderr
    render-pools.py --names
        the process names supervisord should be running, one a line
        (containers/healthcheck.sh)
    render-pools.py --targets
        each program's metrics port: "NAME PORT" a line, the producer first
        (unless KCRON_PRODUCER=false), e.g. for a Prometheus file_sd list

Metrics ports (docs/monitoring.md): the producer 9400, the default pool's
process n 9401 + n, the k-th other pool of KCRON_QUEUES (k = 1, 2, ... in
the order listed, the default queue not counted) 9401 + 100k + n: the
template's `--metrics-port 9401+%(process_num)d` gets its base moved up by
100k in each copy.

A bad setting is an error naming it, exit 78 (EX_CONFIG).  Standard library
only: it runs before kcron, with the venv's or the system's python3.
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

EX_USAGE = 64
EX_CONFIG = 78
DEFAULT_TOPIC = "kcron.jobs"
DEFAULT_CONSUMERS = 2
MAX_COUNT = 99  # two-digit process numbers; a typo's 1000 should not fork 1000 workers
TEMPLATE_SECTION = "program:kcron-consumer"
PREFIX = "kcron-consumer"
# Kafka's rule for topic names, as kcron's job-file parser applies it to queue=.
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
PRODUCER_PORT = 9400  # as etc/supervisord.conf passes them (tests/unit/test_pools.py)
WORKER_PORT = 9401
POOL_PORT_STEP = 100  # > MAX_COUNT: pools never share a port
_PORT_RE = re.compile(r"--metrics-port (\d+)\+")
# Topics kcron derives from a queue's name: never a queue of their own.
_DERIVED_SUFFIXES = (".retry", ".dlq", ".state")


class PoolError(ValueError):
    """A bad KCRON_QUEUES, KCRON_CONSUMERS or KCRON_TOPIC; the message says which."""


@dataclass(frozen=True)
class Pool:
    queue: str
    count: int
    default: bool  # the default queue: the static section, today's process names
    k: int = 0  # place among the other pools in KCRON_QUEUES (1, 2, ...): its ports

    @property
    def program(self) -> str:
        return PREFIX if self.default else f"{PREFIX}-{self.queue}"

    def process_names(self) -> list[str]:
        return [f"{self.program}-{n:02d}" for n in range(self.count)]

    def port(self, n: int, base: int = WORKER_PORT) -> int:
        """The metrics port of process ``n``."""
        return base + POOL_PORT_STEP * self.k + n


def _count(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > MAX_COUNT:
        raise PoolError(f"{what}: count must be a whole number from 0 to {MAX_COUNT}, not {text!r}")
    return int(text)


def _topic(name: str, what: str) -> str:
    if not _TOPIC_RE.fullmatch(name) or name in (".", ".."):
        raise PoolError(
            f"{what}: {name!r} is not a legal Kafka topic name "
            "(1 to 249 of letters, digits, '.', '_', '-')"
        )
    if name.endswith(_DERIVED_SUFFIXES):
        raise PoolError(f"{what}: {name!r} is a topic kcron derives from a queue, not a queue")
    return name


def parse_pools(env: Mapping[str, str]) -> list[Pool]:
    """The pools the environment asks for, the default queue's first."""
    default = _topic(env.get("KCRON_TOPIC") or DEFAULT_TOPIC, "KCRON_TOPIC")
    spec = env.get("KCRON_QUEUES", "")
    if not spec.strip():
        consumers = env.get("KCRON_CONSUMERS") or str(DEFAULT_CONSUMERS)
        return [Pool(default, _count(consumers.strip(), "KCRON_CONSUMERS"), True)]
    counts: dict[str, int] = {}
    for item in spec.replace(",", " ").split():
        name, sep, count = item.partition("=")
        if not sep or not name:
            raise PoolError(f"KCRON_QUEUES: {item!r} is not NAME=COUNT (e.g. cluster-a=2)")
        what = f"KCRON_QUEUES {item!r}"
        if _topic(name, what) in counts:
            raise PoolError(f"{what}: queue {name!r} is named twice")
        counts[name] = _count(count, what)
    pools = [Pool(default, counts.pop(default, 0), True)]
    others = enumerate(counts.items(), start=1)
    return pools + [Pool(name, count, False, k) for k, (name, count) in others]


def render(pools: list[Pool], template: Mapping[str, str]) -> str:
    """The [program:...] sections of the non-default pools, copies of ``template``."""
    out = [
        "; Rendered by etc/render-pools.py from KCRON_QUEUES before supervisord started;",
        "; each section a copy of [program:kcron-consumer] in supervisord.conf.",
        "; Do not edit: it is rewritten at every start.",
    ]
    for pool in pools:
        if pool.default or pool.count == 0:
            continue
        out += ["", f"[program:{pool.program}]"]
        for key, value in template.items():
            if key == "command":
                value = _PORT_RE.sub(lambda m: f"--metrics-port {pool.port(0, int(m[1]))}+", value)
                value = f"{value} --topic {pool.queue}"
            elif key == "numprocs":
                value = str(pool.count)
            out.append(f"{key}={value}")
    return "\n".join(out) + "\n"


def template_from(conf_path: str) -> dict[str, str]:
    conf = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    if not conf.read(conf_path):
        raise PoolError(f"cannot read {conf_path}")
    if not conf.has_section(TEMPLATE_SECTION):
        raise PoolError(f"{conf_path} has no [{TEMPLATE_SECTION}] section")
    return dict(conf.items(TEMPLATE_SECTION))


def targets(pools: list[Pool], env: Mapping[str, str]) -> list[str]:
    """"NAME PORT" of every program that serves metrics, the producer first."""
    producer = env.get("KCRON_PRODUCER", "true").strip().lower() not in ("false", "no", "off", "0")
    lines = [f"kcron-producer {PRODUCER_PORT}"] if producer else []
    for pool in pools:
        lines += [f"{name} {pool.port(n)}" for n, name in enumerate(pool.process_names())]
    return lines


def describe(pools: list[Pool]) -> str:
    parts = []
    for pool in pools:
        names = pool.process_names()
        shown = names[0] if len(names) == 1 else f"{names[0]}..{names[-1][-2:]}" if names else "-"
        parts.append(f"{pool.queue}={pool.count} ({shown})")
    return "consumer pools: " + ", ".join(parts)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", help="supervisord.conf holding [program:kcron-consumer]")
    parser.add_argument("--out", help="the file supervisord.conf includes")
    parser.add_argument("--names", action="store_true", help="print the expected process names")
    parser.add_argument("--targets", action="store_true", help="print NAME PORT of each program")
    args = parser.parse_args(argv)
    if not (args.names or args.targets) and not (args.conf and args.out):
        parser.print_usage(sys.stderr)
        print("render-pools: --conf and --out, or --names, or --targets", file=sys.stderr)
        return EX_USAGE
    env = os.environ if env is None else env
    try:
        pools = parse_pools(env)
        if args.names:
            print("\n".join(name for pool in pools for name in pool.process_names()))
            return 0
        if args.targets:
            print("\n".join(targets(pools, env)))
            return 0
        text = render(pools, template_from(args.conf))
    except PoolError as exc:
        print(f"render-pools: {exc}", file=sys.stderr)
        return EX_CONFIG
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.out)  # never a half-written file for supervisord to read
    print(describe(pools), file=sys.stderr)
    print(pools[0].count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
