"""Signed runs (kcron/signing.py): the key file, signing, and what verification refuses."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kcron import signing
from kcron.errors import ConfigError, ExitCode
from kcron.message import Attempt, decode, format_time
from kcron.signing import KeySet, Refusal, encode_run, load_keys
from kcron.worker.guard import Guard
from tests.unit.fake_worker_kafka import T0, a_run

SECRET = "a" * 64
OTHER = "b" * 64


def key_file(tmp_path: Path, text: str, mode: int = 0o600, name: str = "kcron.key") -> str:
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def keys(tmp_path: Path, text: str = SECRET + "\n") -> KeySet:
    return load_keys(key_file(tmp_path, text))


def signed_doc(key_set: KeySet, **changes: Any) -> dict[str, Any]:
    run = a_run(queue="jobs", not_before=T0 + timedelta(seconds=5), timeout_s=30.0, **changes)
    return json.loads(encode_run(run, key_set))


def test_a_signed_run_verifies_and_still_decodes_as_the_same_run(tmp_path):
    key_set = keys(tmp_path)
    run = a_run(queue="jobs", timeout_s=30.0)
    raw = encode_run(run, key_set)

    assert key_set.verify_raw(raw) is None
    # Older workers ignore the extra field: the run reads exactly as before.
    assert decode(raw) == run
    assert json.loads(raw)["sig"]["kid"] == signing.derived_key_id(SECRET.encode())


def test_without_keys_a_run_is_encoded_as_it_always_was():
    run = a_run()
    assert encode_run(run, None) == run.encode()


# Every field that decides what runs and when, plus ones a later version may add.
TAMPERED = [
    ("id", "00000000-0000-4000-8000-000000000000"),
    ("job", "other"),
    ("command", "sh -c 'id > pwned.txt'"),
    ("shell", True),
    ("queue", "jobs.privileged"),
    ("scheduled_for", "2030-01-01T00:00:00.000Z"),
    ("not_before", "2030-01-01T00:00:00.000Z"),
    ("attempt", 2),
    ("max_attempts", 9),
    ("timeout_s", None),
    ("produced_at", "2030-01-01T00:00:00.000Z"),
    ("history", []),
    ("overlap", "skip"),  # a field this version does not know is covered too
    ("trigger", {"by": "someone"}),
]


@pytest.mark.parametrize(("field", "value"), TAMPERED, ids=[f for f, _ in TAMPERED])
def test_changing_any_field_breaks_the_signature(tmp_path, field, value):
    key_set = keys(tmp_path)
    doc = signed_doc(key_set)
    assert doc.get(field) != value
    doc[field] = value

    refusal = key_set.verify(doc)

    assert refusal is not None and refusal.code == Refusal.BAD_SIGNATURE


def test_removing_a_field_breaks_the_signature(tmp_path):
    key_set = keys(tmp_path)
    doc = signed_doc(key_set)
    del doc["not_before"]
    assert key_set.verify(doc) is not None


def test_key_order_and_spacing_on_the_wire_do_not_matter(tmp_path):
    key_set = keys(tmp_path)
    doc = signed_doc(key_set)
    raw = json.dumps(dict(reversed(list(doc.items()))), indent=2).encode()
    assert key_set.verify_raw(raw) is None


@pytest.mark.parametrize(
    ("sig", "code"),
    [
        (None, Refusal.UNSIGNED),
        ("deadbeef", Refusal.BAD_SIGNATURE),
        ({"alg": "none", "kid": "x", "mac": "0" * 64}, Refusal.BAD_SIGNATURE),
        ({"alg": "hmac-sha256", "kid": "x", "mac": "zz"}, Refusal.BAD_SIGNATURE),
        ({"alg": "hmac-sha256", "kid": "nobody", "mac": "0" * 64}, Refusal.UNKNOWN_KEY),
    ],
)
def test_missing_malformed_and_unknown_key_signatures_are_refused(tmp_path, sig, code):
    key_set = keys(tmp_path)
    doc = signed_doc(key_set)
    if sig is None:
        del doc["sig"]
    else:
        doc["sig"] = sig
    refusal = key_set.verify(doc)
    assert refusal is not None and refusal.code == code


def test_a_run_signed_with_another_key_of_the_same_id_is_refused(tmp_path):
    ours = load_keys(key_file(tmp_path, f"k1:{SECRET}\n", name="ours"))
    theirs = load_keys(key_file(tmp_path, f"k1:{OTHER}\n", name="theirs"))
    refusal = ours.verify(signed_doc(theirs))
    assert refusal is not None and refusal.code == Refusal.BAD_SIGNATURE


def test_rotation_the_first_key_signs_and_every_key_verifies(tmp_path):
    old = load_keys(key_file(tmp_path, f"2026-01:{OTHER}\n", name="old"))
    rotated = load_keys(key_file(tmp_path, f"# new first\n2026-12:{SECRET}\n2026-01:{OTHER}\n"))

    assert rotated.signing_id == "2026-12"
    assert rotated.verify(signed_doc(old)) is None  # runs already in flight still run
    assert signed_doc(rotated)["sig"]["kid"] == "2026-12"
    refusal = old.verify(signed_doc(rotated))  # a worker not yet given the new key
    assert refusal is not None and refusal.code == Refusal.UNKNOWN_KEY


def test_resigning_replaces_the_old_signature(tmp_path):
    key_set = keys(tmp_path)
    doc = signed_doc(key_set)
    doc["attempt"] = 2
    assert key_set.verify(key_set.sign(doc)) is None


def test_the_simple_key_file_is_its_whole_trimmed_content(tmp_path):
    key_set = load_keys(key_file(tmp_path, f"\n  {SECRET}  \n\n"))
    assert dict(key_set.keys) == {signing.derived_key_id(SECRET.encode()): SECRET.encode()}
    assert SECRET not in repr(key_set)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_key_file_open_to_group_or_others_is_refused(tmp_path, mode):
    path = key_file(tmp_path, SECRET, mode=mode)
    with pytest.raises(ConfigError) as exc:
        load_keys(path)
    assert exc.value.exit_code == ExitCode.CONFIG
    assert path in str(exc.value) and f"chmod 600 {path}" in str(exc.value)


def test_a_private_key_file_is_accepted(tmp_path):
    assert load_keys(key_file(tmp_path, SECRET, mode=0o400)).signing_id


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("short-secret", "fewer than 32"),
        (f"k1:{SECRET}\nk2:short", "key 'k2' is 5 characters, fewer than 32"),
        (f"k1:{SECRET}\nk1:{OTHER}", "appears twice"),
        (f"bad id!:{SECRET}", "not KEYID:SECRET"),
        (f"k1:{SECRET}\n{OTHER}", "not KEYID:SECRET"),
        ("  \n# only a comment\n", "is empty"),
    ],
)
def test_bad_key_files_are_refused_with_the_reason(tmp_path, text, problem):
    with pytest.raises(ConfigError, match=problem):
        load_keys(key_file(tmp_path, text))


def test_a_missing_key_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read signing key file"):
        load_keys(str(tmp_path / "absent"))


def test_a_signed_run_for_another_queue_is_refused_by_the_guard(tmp_path):
    key_set = keys(tmp_path)
    raw = encode_run(a_run(queue="jobs.other"), key_set)
    refusal = Guard("jobs", key_set).check(raw, decode(raw), T0)
    assert refusal is not None and refusal.code == Refusal.WRONG_QUEUE
    ok = encode_run(a_run(queue="jobs"), key_set)
    assert Guard("jobs", key_set).check(ok, decode(ok), T0) is None


def test_a_retry_with_its_history_signs_and_verifies(tmp_path):
    key_set = keys(tmp_path)
    attempt = Attempt(1, T0, T0 + timedelta(seconds=1), "failed", 1)
    run = a_run(queue="jobs", attempt=2, history=(attempt,), not_before=T0)
    raw = encode_run(run, key_set)
    assert key_set.verify_raw(raw) is None
    assert json.loads(raw)["not_before"] == format_time(T0)


def test_with_a_max_age_a_replay_older_than_the_window_is_refused(tmp_path):
    key_set = keys(tmp_path)
    guard = Guard("jobs", key_set, max_age=timedelta(minutes=10))
    raw = encode_run(a_run(queue="jobs", produced_at=T0), key_set)

    assert guard.check(raw, decode(raw), T0 + timedelta(minutes=10)) is None
    refusal = guard.check(raw, decode(raw), T0 + timedelta(minutes=10, seconds=1))
    assert refusal is not None and refusal.code == Refusal.STALE
    # Without a bound, the same replay is accepted: it can only repeat this run.
    assert Guard("jobs", key_set).check(raw, decode(raw), T0 + timedelta(days=30)) is None


def test_a_signed_run_matches_the_published_schema(tmp_path):
    from tests.unit.test_message import VALIDATOR

    doc = signed_doc(keys(tmp_path))
    VALIDATOR.validate(doc)
    doc["sig"]["mac"] = "not hex"
    assert list(VALIDATOR.iter_errors(doc))
