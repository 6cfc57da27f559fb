"""Hostile input: over a thousand malformed messages, and commands that misbehave.

Every bad message must end in the dead-letter topic with its raw bytes and its
partition/offset, the worker must stay up, and the good runs between them
must still execute, once each.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import random
import select
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kcron import signing
from kcron.errors import DecodeError
from kcron.message import MAX_MESSAGE_BYTES, decode
from kcron.retry import MAX_RAW_KEPT
from kcron.signing import KeySet
from tests.conftest import Broker
from tests.integration.runs import a_run, create_topics, dead_letters, epoch, produce
from tests.support import Kcron, read_lines, worker

pytestmark = pytest.mark.integration

BAD = 1050
GOOD_EVERY = 50  # one good run after every 50 bad messages


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


# -- the generator: deterministic, seeded, no hypothesis ----------------------------------

REQUIRED = ["v", "id", "job", "command", "shell", "scheduled_for", "produced_at",
            "attempt", "max_attempts", "timeout_s", "source"]  # fmt: skip
WRONG_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 10**30, "", "x", "1", [], [1], {}, {"a": 1}, "🙂" * 3,
]  # fmt: skip


def _template() -> dict[str, Any]:
    return a_run("echo hi", job="hostile", attempts=3, timeout_s=30).to_dict()


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def not_json(rng: random.Random) -> bytes:
    text = _dumps(_template())
    choice = rng.randrange(4)
    if choice == 0:
        return text[: rng.randrange(1, len(text) - 1)]  # truncated
    if choice == 1:
        return bytes(rng.choice(b"{}[]:,\"'abc 0123\\\n") for _ in range(rng.randrange(1, 200)))
    if choice == 2:
        return text.replace(b'"', b"'")  # Python-ish, not JSON
    return text + b"," + text  # two objects


def not_utf8(rng: random.Random) -> bytes:
    text = bytearray(_dumps(_template()))
    text[rng.randrange(len(text))] = rng.choice([0xFF, 0xFE, 0xC3, 0x80, 0xED])
    return bytes(text)


def not_an_object(rng: random.Random) -> bytes:
    return _dumps(rng.choice([[], [_template()], 42, -1.5, "run", None, True, [[[]]]]))


def wrong_type(rng: random.Random) -> bytes:
    while True:  # some draws fit their field ("1" is a fine command): draw again
        doc = _template()
        doc[rng.choice(REQUIRED)] = rng.choice(WRONG_VALUES)
        try:
            decode(_dumps(doc))
        except DecodeError:
            return _dumps(doc)


def missing_fields(rng: random.Random) -> bytes:
    doc = _template()
    for name in rng.sample(REQUIRED, rng.randrange(1, 4)):
        doc.pop(name)
    return _dumps(doc)


def huge(rng: random.Random) -> bytes:
    doc = _template()
    doc["command"] = "echo " + "x" * rng.randrange(MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES * 2)
    return _dumps(doc)


def deeply_nested(rng: random.Random) -> bytes:
    depth = rng.randrange(2_000, 30_000)
    choice = rng.randrange(3)
    if choice == 0:
        return b"[" * depth + b"]" * depth
    if choice == 1:
        return b'{"a":' * depth + b"1" + b"}" * depth
    doc = _template()
    doc["trace"] = "@"  # a valid run carrying a deeply nested extra field
    return _dumps(doc).replace(b'"@"', b"[" * depth + b"]" * depth)


def wrong_version(rng: random.Random) -> bytes:
    doc = _template()
    doc["v"] = rng.choice([0, 2, -1, 3, 99, "1", 1.0, None, True, 10**20])
    return _dumps(doc)


def bad_value(rng: random.Random) -> bytes:
    doc = _template()
    name, value = rng.choice(
        [
            ("attempt", 0), ("attempt", 4), ("max_attempts", 0), ("id", "not-a-uuid"),
            ("id", "{" + doc["id"] + "}"), ("job", ""), ("command", "   "),
            ("command", "echo \0"), ("timeout_s", -5), ("timeout_s", 0),
            ("scheduled_for", "2026-02-30T00:00:00.000Z"), ("scheduled_for", "yesterday"),
            ("produced_at", "2026-11-28T20:05:00+01:00"),
        ]
    )  # fmt: skip
    doc[name] = value
    return _dumps(doc)


def bad_retry_fields(rng: random.Random) -> bytes:
    doc = _template()
    entry = {"attempt": 1, "started_at": doc["produced_at"], "finished_at": doc["produced_at"],
             "outcome": "failed", "exit_code": 1}  # fmt: skip
    name, value = rng.choice(
        [
            ("not_before", 5), ("not_before", "soon"), ("history", {}),
            ("history", [1]), ("history", [{**entry, "attempt": 0}]),
            ("history", [{**entry, "outcome": "Nope!"}]), ("history", [entry] * 101),
            ("history", [{k: v for k, v in entry.items() if k != "started_at"}]),
        ]
    )  # fmt: skip
    doc[name] = value
    return _dumps(doc)


def empty(rng: random.Random) -> bytes | None:
    return rng.choice([b"", None, b" ", b"\n", b"{}", b"null"])


GENERATORS: list[Callable[[random.Random], bytes | None]] = [
    not_json, not_utf8, not_an_object, wrong_type, missing_fields, deeply_nested,
    wrong_version, bad_value, bad_retry_fields, empty,
] * 4 + [huge]  # fmt: skip


def hostile(count: int, seed: int = 20261128) -> list[tuple[str, bytes | None, bytes | None]]:
    """``count`` (kind, key, value) payloads, each one checked to be undecodable."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        make = GENERATORS[i % len(GENERATORS)]
        value = make(rng)
        try:
            decode(value)
        except DecodeError:
            pass
        else:
            raise AssertionError(f"generator {make.__name__} made a valid run: {value!r}")
        key = rng.choice([None, str(uuid.uuid4()).encode(), b"\xff\x00 binary key", b""])
        out.append((make.__name__, key, value))
    return out


def forgeries(
    count: int, keys: KeySet, topic: str, pwned: Path, seed: int = 20261201
) -> list[tuple[str, bytes | None, bytes | None]]:
    """``count`` runs that decode but carry no valid signature: a keyed worker rejects each."""
    rng = random.Random(seed)
    other = KeySet({keys.signing_id: b"o" * 64}, keys.signing_id)
    out = []
    for i in range(count):
        run = dataclasses.replace(a_run(f"sh -c 'id >> {pwned}'", job="forged"), queue=topic)
        doc = json.loads(signing.encode_run(run, keys))
        variant = i % 5
        if variant == 0:
            del doc["sig"]
        elif variant == 1:
            doc["sig"] = rng.choice(WRONG_VALUES)
        elif variant == 2:
            doc["sig"] = {**doc["sig"], rng.choice(["kid", "mac", "alg"]): rng.choice(WRONG_VALUES)}
        elif variant == 3:  # a real signature, then one field changed
            name, changed = rng.choice(
                [("shell", True), ("timeout_s", None), ("job", "other"), ("attempt", 1),
                 ("scheduled_for", "2030-01-01T00:00:00.000Z"), ("max_attempts", 2)]
            )  # fmt: skip
            doc[name] = changed
        else:
            doc = json.loads(signing.encode_run(run, other))
        value = _dumps(doc)
        decode(value)  # a valid run: only its signature is wrong
        if keys.verify_raw(value) is None:
            continue  # the random change happened to leave it unchanged
        out.append((f"forged-{variant}", run.key, value))
    return out


@pytest.mark.parametrize("keyed", [False, True], ids=["unsigned", "signed"])
def test_a_thousand_hostile_messages_are_dead_lettered_and_good_runs_still_run(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron], keyed: bool
) -> None:
    ran, pwned = tmp_path / "ran.txt", tmp_path / "pwned.txt"
    create_topics(broker.bootstrap, topic, 2)
    env: dict[str, str] = {}
    keys: KeySet | None = None
    # With a key, a fifth of the undecodable suite (the same generators) plus
    # forgeries, to keep the second run of this suite short.
    payloads = hostile(BAD // 5 if keyed else BAD)
    forged: list[tuple[str, bytes | None, bytes | None]] = []
    if keyed:
        key = tmp_path / "kcron.key"
        key.write_text("k1:" + "s" * 64)
        key.chmod(0o600)
        env["KCRON_SIGNING_KEY_FILE"] = str(key)
        keys = signing.load_keys(str(key))
        forged = forgeries(100, keys, topic, pwned)
        payloads = [p for pair in itertools.zip_longest(payloads, forged) for p in pair if p]
    good = []
    records: list[tuple[bytes | None, bytes | None]] = []
    for i, (_kind, key_bytes, value) in enumerate(payloads):
        records.append((key_bytes, value))
        if i % GOOD_EVERY == GOOD_EVERY - 1:
            run = dataclasses.replace(
                a_run(f"sh -c 'echo $KCRON_RUN_ID >> {ran}'", job="good"), queue=topic
            )
            good.append(run)
            records.append((run.key, signing.encode_run(run, keys)))
    w = worker(procs, tmp_path, broker, topic, group, **env)
    started = time.monotonic()
    sent = produce(broker.bootstrap, topic, records)
    good_values = {signing.encode_run(r, keys) for r in good}
    bad_sent = [s for s in sent if s.value not in good_values]
    forged_values = {value for _, _, value in forged}
    bad = len(payloads)
    assert len(bad_sent) == bad

    letters = dead_letters(broker.bootstrap, topic, bad, timeout=120, idle_s=2)
    elapsed = time.monotonic() - started
    w.wait_for(lambda: len(read_lines(ran)) >= len(good), 30, "the good runs")

    where = {(s.partition, s.offset): s for s in bad_sent}
    got = Counter((x.record["source"]["partition"], x.record["source"]["offset"]) for x in letters)
    missing = set(where) - set(got)
    duplicated = {k: n for k, n in got.items() if n > 1}
    assert not missing, f"{len(missing)} bad messages not dead-lettered"
    assert set(got) == set(where), "a dead letter for a message that was not bad"
    assert not duplicated, duplicated
    for letter in letters:
        rec = letter.record
        src = where[(rec["source"]["partition"], rec["source"]["offset"])]
        value = src.value or b""
        kind = "rejected" if value in forged_values else "undecodable"
        assert rec["kind"] == kind and rec["run"] is None
        assert rec["source"]["topic"] == topic
        assert rec["raw_bytes"] == len(value)
        assert base64.b64decode(rec["raw_b64"]) == value[:MAX_RAW_KEPT]
        prefix = "rejected (" if kind == "rejected" else "undecodable message: "
        assert rec["reason"].startswith(prefix)
    ids = read_lines(ran)
    assert sorted(ids) == sorted(r.id for r in good), "each good run exactly once"
    assert w.proc.poll() is None, "the worker must stay up"
    skipped = w.messages("undecodable message skipped")
    assert len(skipped) == bad - len(forged)
    assert len(w.messages("run rejected, not executed")) == len(forged)
    assert not pwned.exists(), "a forged run executed"
    kinds = Counter(kind for kind, _, _ in payloads)
    reasons = Counter(x.record["reason"].split(":")[1].strip()[:24] for x in letters)
    peak = peak_rss_mb(w.proc.pid)
    print(
        f"\nhostile: {bad} bad messages ({dict(kinds)}) and {len(good)} good runs; "
        f"{len(letters)} dead letters, 0 missing, 0 duplicated, {len(ids)} good runs executed, "
        f"{elapsed:.1f} s, worker peak RSS {peak:.0f} MB\nreasons: {dict(reasons.most_common(8))}"
    )
    assert w.stop() == 0


def _gone(pid: int, within: float) -> bool:
    """True once ``pid`` has exited (a zombie counts: nothing of it runs)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], within)[0])
    finally:
        os.close(fd)


@pytest.mark.slow
def test_misbehaving_commands_are_contained_and_the_worker_goes_on(
    broker: Broker, topic: str, group: str, tmp_path: Path, procs: list[Kcron]
) -> None:
    child_pid = tmp_path / "child.pid"
    create_topics(broker.bootstrap, topic, 1)
    gigabyte = 1 << 30
    big = a_run(f"head -c {gigabyte} /dev/zero | tr '\\0' x", job="gigabyte", shell=True,
                timeout_s=300)  # fmt: skip
    stdin = a_run("sh -c 'cat; read line || echo stdin-closed'", job="stdin", timeout_s=20)
    forker = a_run(
        f"sleep 600 >/dev/null 2>&1 & echo $! > {child_pid}; echo forked",
        job="forker", shell=True, timeout_s=3,
    )  # fmt: skip
    forever = a_run("sleep 100000", job="forever", timeout_s=2)
    after = a_run("echo still alive", job="after")
    w = worker(procs, tmp_path, broker, topic, group, KCRON_CONCURRENCY="2",
               KCRON_PARTITIONS="1")  # fmt: skip
    w.wait_for(lambda: w.assigned() == [0], 30, "the partition")
    baseline = peak_rss_mb(w.proc.pid)
    produce(broker.bootstrap, topic, [(r.key, r.encode()) for r in (big, stdin, forker, forever)])

    def ended(run_id: str) -> dict[str, Any] | None:
        for r in w.records():
            if r.get("run") == run_id and r["msg"] in ("run succeeded", "run failed"):
                return r
        return None

    # The forker's child lives until the run's timeout, then dies with it.
    w.wait_for(lambda: ended(forker.id), 60, "the forking job")
    started = next(r for r in w.messages("run started") if r["run"] == forker.id)
    pid = int(child_pid.read_text())
    assert not _gone(pid, 0.5), "the child lives on after its parent exited..."
    assert _gone(pid, 8), "...but not past the run's timeout"
    child_lived = time.time() - epoch(started["ts"])
    assert ended(forker.id)["outcome"] == "succeeded"
    assert w.messages("job exited but left processes running; they are killed at its timeout")

    w.wait_for(lambda: all(ended(r.id) for r in (big, stdin, forever)), 180, "the other jobs")
    big_end = ended(big.id)
    assert big_end["outcome"] == "succeeded"
    assert big_end["output_bytes"] == gigabyte and big_end["output_truncated"] is True
    peak = peak_rss_mb(w.proc.pid)
    assert peak < 200, f"worker peak RSS {peak:.0f} MB after 1 GB of output"

    stdin_end = ended(stdin.id)
    assert stdin_end["outcome"] == "succeeded" and stdin_end["duration_ms"] < 5000
    assert any(r["msg"] == "stdin-closed" for r in w.records() if r.get("run") == stdin.id)

    forever_end = ended(forever.id)
    assert forever_end["outcome"] == "timed_out"
    assert 2000 <= forever_end["duration_ms"] < 6000
    letters = dead_letters(broker.bootstrap, topic, 1)
    assert [(x.id, x.record["outcome"]) for x in letters] == [(forever.id, "timed_out")]

    produce(broker.bootstrap, topic, [(after.key, after.encode())])
    w.wait_for(lambda: ended(after.id), 30, "a run after all that")
    assert ended(after.id)["outcome"] == "succeeded"
    assert w.proc.poll() is None
    print(
        f"\ncommands: 1 GiB to stdout in {big_end['duration_ms'] / 1000:.1f} s, worker peak RSS "
        f"{baseline:.0f} MB before, {peak:.0f} MB after; stdin job {stdin_end['duration_ms']} ms; "
        f"forked child killed about {child_lived:.1f} s after its run started (timeout 3 s); "
        f"endless job killed after {forever_end['duration_ms']} ms (timeout 2 s), dead-lettered"
    )
    assert w.stop() == 0
