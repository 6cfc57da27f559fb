"""Signed runs: HMAC-SHA256 over a run message, keys from a file. Pure but for reading it.

The signature is a field of the message, ``sig``, not a Kafka header: it
travels with the JSON wherever the JSON goes (into a dead-letter record, out
again through ``kcron dlq requeue``, through tools that copy values but drop
headers), and one decoded object is all a worker needs to check.

What is signed is the canonical JSON of the whole message minus ``sig``
(sorted keys, no spaces, ASCII escapes), after a fixed prefix that names the
format. Every field is covered, so a field added later (``overlap``,
``trigger``, ...) is covered without a change here; a verifier re-encodes
the object it parsed, so key order and spacing on the wire do not matter.

The key file (docs/security.md): either one secret, the whole content with
surrounding whitespace trimmed (key id: the first 8 hex digits of its
SHA-256, see ``derived_key_id``), or several ``KEYID:SECRET`` lines for
rotation, where the first line signs and every line verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kcron.errors import ConfigError
from kcron.message import RunMessage

SIG_FIELD = "sig"
ALGORITHM = "hmac-sha256"
MIN_SECRET_CHARS = 32
_PREFIX = b"kcron-run-v1\n"  # a run's MAC can never pass for another kind of document
_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAC_RE = re.compile(r"[0-9a-f]{64}")


class Refusal:
    """Why a worker refuses a message: the metric label, and one readable line."""

    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    WRONG_QUEUE = "wrong_queue"
    STALE = "stale"
    NOT_ALLOWED = "not_allowed"


@dataclass(frozen=True)
class Verdict:
    """A refusal: ``code`` is one of Refusal's, ``reason`` says what was wrong."""

    code: str
    reason: str


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: ``doc`` without ``sig``, in one fixed encoding."""
    body = {k: v for k, v in doc.items() if k != SIG_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _PREFIX + text.encode("ascii")


def derived_key_id(secret: bytes) -> str:
    """The id of a key given without one: names it in logs without revealing it."""
    return hashlib.sha256(secret).hexdigest()[:8]


@dataclass(frozen=True)
class KeySet:
    """Every key that verifies; ``signing_id`` names the one that signs."""

    keys: Mapping[str, bytes]
    signing_id: str

    def __repr__(self) -> str:  # never print a secret
        return f"KeySet(ids={sorted(self.keys)}, signing_id={self.signing_id!r})"

    def _mac(self, key_id: str, doc: Mapping[str, Any]) -> str:
        return hmac.new(self.keys[key_id], canonical(doc), hashlib.sha256).hexdigest()

    def sign(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """``doc`` with its ``sig`` (any old one replaced), signed by the signing key."""
        body = {k: v for k, v in doc.items() if k != SIG_FIELD}
        mac = self._mac(self.signing_id, body)
        return {**body, SIG_FIELD: {"alg": ALGORITHM, "kid": self.signing_id, "mac": mac}}

    def encode(self, doc: Mapping[str, Any]) -> bytes:
        """The signed message's bytes, encoded as RunMessage.encode does."""
        return json.dumps(self.sign(doc), ensure_ascii=False, separators=(",", ":")).encode()

    def verify(self, doc: Mapping[str, Any]) -> Verdict | None:
        """None if ``doc`` carries a valid signature by one of these keys."""
        sig = doc.get(SIG_FIELD)
        if sig is None:
            return Verdict(Refusal.UNSIGNED, "message is not signed")
        if not isinstance(sig, dict) or sig.get("alg") != ALGORITHM:
            return Verdict(Refusal.BAD_SIGNATURE, f"'{SIG_FIELD}' is not an {ALGORITHM} signature")
        kid, mac = sig.get("kid"), sig.get("mac")
        if not isinstance(kid, str) or not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
            return Verdict(Refusal.BAD_SIGNATURE, f"malformed '{SIG_FIELD}'")
        if kid not in self.keys:
            return Verdict(Refusal.UNKNOWN_KEY, f"signed by unknown key id '{kid[:64]}'")
        if not hmac.compare_digest(self._mac(kid, doc), mac):
            return Verdict(Refusal.BAD_SIGNATURE, f"signature by key '{kid}' does not match")
        return None

    def verify_raw(self, raw: bytes) -> Verdict | None:
        """``verify`` for the bytes of a message that already decoded as a run."""
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            return Verdict(Refusal.BAD_SIGNATURE, "not a JSON object")
        return self.verify(doc)


def load_keys(path: str) -> KeySet:
    """The key set in ``path``; ConfigError (exit 78) for anything unsafe or malformed."""
    text = _read_private(path)
    lines = [line.strip() for line in text.strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ConfigError(f"signing key file {path} is empty")
    if not any(":" in line for line in lines):
        secret = text.strip().encode()
        _check_secret(path, "the key", secret)
        kid = derived_key_id(secret)
        return KeySet({kid: secret}, kid)
    keys: dict[str, bytes] = {}
    for number, line in enumerate(lines, 1):
        kid, sep, secret_text = line.partition(":")
        kid = kid.strip()
        if not sep or not _KEY_ID_RE.fullmatch(kid):
            raise ConfigError(
                f"signing key file {path}: key {number} is not KEYID:SECRET with a key id of "
                "letters, digits, '.', '_' or '-' (a single secret must not contain ':')"
            )
        if kid in keys:
            raise ConfigError(f"signing key file {path}: key id '{kid}' appears twice")
        secret = secret_text.strip().encode()
        _check_secret(path, f"key '{kid}'", secret)
        keys[kid] = secret
    return KeySet(keys, next(iter(keys)))


def _check_secret(path: str, what: str, secret: bytes) -> None:
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"signing key file {path}: {what} is {len(secret)} characters, fewer than "
            f"{MIN_SECRET_CHARS}; make one with: openssl rand -hex 32"
        )


def _read_private(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read signing key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"signing key file {path} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); make it private: chmod 600 {path}"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"signing key file {path} is not UTF-8 text") from None


def load_optional(path: str | None) -> KeySet | None:
    """``load_keys`` when a key file is configured, else None (unsigned, as before)."""
    return load_keys(path) if path else None


def encode_run(msg: RunMessage, keys: KeySet | None) -> bytes:
    """A run's bytes for Kafka: signed with ``keys``' signing key, or plain without keys.

    The one place every writer of runs goes through: the producer, backfill,
    trigger, a worker's retries and ``kcron dlq requeue``.
    """
    return msg.encode() if keys is None else keys.encode(msg.to_dict())
