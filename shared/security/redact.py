"""Secrets hygiene (docs/architecture.md §8): no token or secret in a log line, event, error body
or audit.

Two nets, because either alone misses something:
- by field name: a value under `authtoken`, `steptoken`, `token`, `password`, `secret`, `key`,
  `FLOW_TOKEN`, `authorization` (and names built on them, like `IAM_SERVICE_TOKEN`) is replaced;
- by pattern: JWT-looking strings (`eyJ….….…`), `Bearer …` credentials, `name=value` and
  `"name": "value"` pairs with a secret name, and every value registered with `register_secret`
  (ORCHESTRATOR_KEY, IAM_SERVICE_TOKEN) are replaced wherever they appear in text.

`install_redaction()` makes every log record of the process pass through this at creation, so
no handler or formatter added later can print the raw value. `redact(obj)` cleans a dict before it
goes into an event, the audit stream or an error body.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

MASK = "[REDACTED]"
MIN_SECRET_LENGTH = 8  # shorter registered values would mask ordinary words

_SECRET_WORDS = (
    "token",
    "password",
    "passwd",
    "secret",
    "authorization",
    "cookie",
    "credential",
    "apikey",
    "privatekey",
    "accesskey",
    "signingkey",
)
# Names that contain a secret word but hold no secret: the run's fencing token is a counter,
# token and secret ids name things, and redacting them would break events that need them.
_NOT_SECRET = frozenset(
    {
        "fencingtoken",
        "tokenid",
        "tokentype",
        "tokenexpiresat",
        "secretid",
        "secretname",
        "secretref",
        "credentialsid",
        "credentialid",
    }
)
# `key`, `ORCHESTRATOR_KEY`, `api-key`, `hmacKey`; not `monkey` or `keys`.
_KEY_NAME = re.compile(r"(?i:(?:^|[_\-.])key)$|[a-z0-9]Key$")

# Linear time: every pattern may start only where its first run of characters starts (a
# lookbehind refuses a start inside a run), so no character is rescanned from every position
# of a long word; names are bounded too. Texts longer than MAX_TEXT are cut before matching.
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(
    r"(?<![A-Za-z0-9_])(Bearer|Basic)[ \t]+(?![ \t])[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE
)
_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,127}(?![A-Za-z0-9_.-])"
# A quoted value runs to its closing quote, or to the end of the text when there is none (it
# never fails half-way, so an unclosed quote is not rescanned from every later name).
_QUOTED = r"\"[^\"]*(?:\"|\Z)|'[^']*(?:'|\Z)"
# name=value (URLs, repr of objects, env dumps): the value bare or quoted.
_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.-])(?P<name>" + _NAME + r")(?P<sep>[ \t]*=[ \t]*)"
    r"(?P<value>" + _QUOTED + r"|[^\s\"',;&)}\]]+)"
)
# "name": "value" (JSON, repr of dicts): only quoted values, so prose like "key: missing" stays.
_QUOTED_PAIR = re.compile(
    r"(?<![A-Za-z0-9_.-])(?P<name>[\"']?" + _NAME + r"[\"']?)(?P<sep>[ \t]*:[ \t]*)"
    r"(?P<value>" + _QUOTED + ")"
)
# Longer texts are cut (with a note) before they are redacted or logged: 1 MiB, the largest
# request body a function reads.
MAX_TEXT = 1024 * 1024

_lock = threading.Lock()
_secrets: set[str] = set()
_previous_factory: Callable[..., logging.LogRecord] | None = None


def is_secret_name(name: str) -> bool:
    """True when a field of this name holds a secret value (case and separators ignored)."""
    normalized = re.sub(r"[^a-z0-9]", "", name.lower())
    if normalized in _NOT_SECRET:
        return False
    if any(word in normalized for word in _SECRET_WORDS):
        return True
    return bool(_KEY_NAME.search(name))


def register_secret(*values: str | None) -> None:
    """Remembers literal secret values (the orchestrator key, the service token) to mask in text."""
    with _lock:
        _secrets.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)


def redact_text(text: str) -> str:
    """The text with every secret-looking value replaced by MASK."""
    if not text:
        return text
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"... [cut: {len(text) - MAX_TEXT} more characters]"
    with _lock:
        literals = sorted(_secrets, key=len, reverse=True)
    for literal in literals:
        if literal in text:
            text = text.replace(literal, MASK)
    text = _JWT.sub(MASK, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _ASSIGNMENT.sub(_mask_pair, text)
    return _QUOTED_PAIR.sub(_mask_pair, text)


def _mask_pair(match: re.Match[str]) -> str:
    name = match.group("name")
    if not is_secret_name(name.strip("\"'")) or match.group("value").strip("\"'") == MASK:
        return match.group(0)
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{name}{match.group('sep')}{quote}{MASK}{quote}"


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with secrets masked by field name and by pattern."""
    if isinstance(value, Mapping):
        return {
            k: (MASK if is_secret_name(str(k)) and value_present(v) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def value_present(value: object) -> bool:
    return value is not None and value != "" and not isinstance(value, bool)


# --- logging ---------------------------------------------------------------------------------
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redacts a record in place: message (with its args), exception text, stack, extras."""
    if not getattr(record, "_redacted", False):
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not bypass redaction
            message = f"{record.msg!s} (unformattable arguments)"
        record.msg = redact_text(message)
        record.args = ()
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            # Formatters print exc_text; dropping exc_info stops any of them re-rendering it raw.
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        record._redacted = True
    scrub_extras(record)
    return record


def scrub_extras(record: logging.LogRecord) -> None:
    """Redacts the `extra={...}` fields of a record (idempotent)."""
    for name in list(record.__dict__):
        if name in _STANDARD_ATTRIBUTES or name.startswith("_"):
            continue
        value = record.__dict__[name]
        secret = is_secret_name(name) and value_present(value)
        record.__dict__[name] = MASK if secret else redact(value)


class _RedactingRecord(logging.LogRecord):
    """`Logger.makeRecord` adds `extra` fields after the record factory ran; every formatter
    calls getMessage() before it reads them, so that is where they are redacted."""

    def getMessage(self) -> str:
        scrub_extras(self)
        return super().getMessage()


class RedactionFilter(logging.Filter):
    """For handlers that receive records made elsewhere (queues, other processes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


def install_redaction(
    secrets: Iterable[str | None] = (), *, environ: Mapping[str, str] | None = None
) -> None:
    """Every log record of this process is redacted when it is created. Safe to call twice.

    Besides `secrets`, the values of environment variables with a secret name (ORCHESTRATOR_KEY,
    IAM_SERVICE_TOKEN, AWS_SECRET_ACCESS_KEY, ...) are masked wherever they appear.
    """
    global _previous_factory
    register_secret(*secrets)
    env = os.environ if environ is None else environ
    register_secret(*(value for name, value in env.items() if is_secret_name(name)))
    with _lock:
        if _previous_factory is not None:
            return
        previous = logging.getLogRecordFactory()
        _previous_factory = previous

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = scrub_record(previous(*args, **kwargs))
        if type(record) is logging.LogRecord:
            record.__class__ = _RedactingRecord
        return record

    logging.setLogRecordFactory(factory)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactionFilter) for f in handler.filters):
            handler.addFilter(RedactionFilter())


def uninstall_redaction() -> None:
    """Restores the previous record factory and forgets registered secrets (tests)."""
    global _previous_factory
    with _lock:
        if _previous_factory is not None:
            logging.setLogRecordFactory(_previous_factory)
            _previous_factory = None
        _secrets.clear()
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, RedactionFilter)]:
            handler.removeFilter(f)
