"""Dead letters: events a subscriber never accepted, kept for an operator to look at.

The local broker appends them to a JSON-lines file; in Knative the Broker's deadLetterSink is
the fifth target of the image, `functions/dead_letters/main.py` (functions-framework, like the
four functions, with the same HTTP guards: 413 past MAX_REQUEST_BYTES before the rest is read,
400 for malformed or too deeply nested bodies), which appends them to a capped Redis stream.
Either way the record holds the event's attributes and data with the tokens removed (a token is
useless for a later resend anyway: it expires, and the sender signs a fresh one).

Only the Broker may reach the sink: a NetworkPolicy (knative/base/dead-letters.yaml) and, where
the cluster enables Knative's OIDC, the token Knative puts on each delivery, checked here
(`OidcCheck`, settings DEAD_LETTERS_OIDC_*; docs/security.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cloudevents.http import CloudEvent
from redis import Redis

from shared import keys, store
from shared.adapters.iam import IamVerifier
from shared.clock import Clock, SystemClock
from shared.errors import Forbidden, Unauthorized
from shared.events.envelope import SECRET_EXTENSIONS
from shared.events.types import short
from shared.runtime.http import install_guards
from shared.runtime.metrics import observe_dead_letter
from shared.security.redact import redact
from shared.settings import Settings

log = logging.getLogger(__name__)

STREAM_MAXLEN = 10_000
# Attributes the Knative dispatcher adds to a dead-lettered event.
KNATIVE_ERROR_ATTRIBUTES = ("knativeerrorcode", "knativeerrordest", "knativeerrordata")


@dataclass(frozen=True)
class DeadLetter:
    time: float
    subscriber: str
    trigger: str
    status: int | None
    attempts: int
    reason: str
    attributes: dict[str, str]
    data: Any = None
    stripped: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)


def event_record(event: CloudEvent) -> tuple[dict[str, str], Any, list[str]]:
    """(attributes without tokens, data, names of the removed attributes)."""
    attributes: dict[str, str] = {}
    stripped: list[str] = []
    for name, value in event.get_attributes().items():
        if name in SECRET_EXTENSIONS:
            stripped.append(name)
        else:
            attributes[name] = str(value)
    data = event.get_data()
    if isinstance(data, bytes | bytearray):
        data = bytes(data).decode("utf-8", errors="replace")
    return attributes, redact(data), sorted(stripped)


class DeadLetterStore(Protocol):
    def append(self, letter: DeadLetter) -> None: ...


class FileDeadLetters:
    """One JSON line per dead letter (the local broker)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, letter: DeadLetter) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(letter.to_json() + "\n")
        observe_dead_letter(letter.attributes.get("type", ""), letter.subscriber)

    def read(self) -> list[DeadLetter]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [DeadLetter(**json.loads(line)) for line in lines if line.strip()]


class RedisDeadLetters:
    """A capped stream (the Knative dead-letter sink)."""

    def __init__(self, redis: Redis, maxlen: int = STREAM_MAXLEN) -> None:
        self.redis = redis
        self.maxlen = maxlen

    def append(self, letter: DeadLetter) -> None:
        self.redis.xadd(
            keys.broker_dead_letters(),
            {"record": letter.to_json()},
            maxlen=self.maxlen,
            approximate=True,
        )
        observe_dead_letter(letter.attributes.get("type", ""), letter.subscriber)

    def read(self, count: int = 100) -> list[DeadLetter]:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.redis.xrevrange(  # type: ignore[assignment]
            keys.broker_dead_letters(), count=count
        )
        return [DeadLetter(**json.loads(fields[b"record"])) for _, fields in entries]


def from_knative(event: CloudEvent, now: float) -> DeadLetter:
    """A dead letter as the Knative dispatcher delivers it (error attributes on the event)."""
    attributes, data, stripped = event_record(event)
    error: Mapping[str, str] = {
        k: attributes.pop(k) for k in KNATIVE_ERROR_ATTRIBUTES if k in attributes
    }
    code = error.get("knativeerrorcode", "")
    return DeadLetter(
        time=now,
        subscriber=error.get("knativeerrordest", "unknown"),
        trigger="",
        status=int(code) if code.isdigit() else None,
        attempts=0,
        reason="undeliverable (Knative dead-letter sink)",
        attributes=attributes,
        data=data,
        stripped=stripped,
    )


def describe(letter: DeadLetter) -> str:
    """One log line: type, id, target, status; never a token."""
    event_type = short(letter.attributes.get("type", "?"))
    return (
        f"dead-letter {event_type} id={letter.attributes.get('id', '?')} "
        f"→ {letter.subscriber} status={letter.status} attempts={letter.attempts}: {letter.reason}"
    )


def sink(
    store: DeadLetterStore, now: Callable[[], float], report: Callable[[str], None]
) -> Callable[[CloudEvent], int]:
    """The ingress callback of the Knative dead-letter sink: record, log one line, 202."""

    def accept(event: CloudEvent) -> int:
        letter = from_knative(event, now())
        store.append(letter)
        report(describe(letter))
        return 202

    return accept


class OidcCheck:
    """Knative's OIDC token on a delivery (`Authorization: Bearer`): signed by a key of the
    cluster's issuer, for our audience, and for one of the Broker's service accounts (a token
    for our audience is all any pod could ask its kubelet for, so the subject counts too)."""

    def __init__(self, verifier: IamVerifier, subject_prefixes: tuple[str, ...]) -> None:
        self._verifier, self._prefixes = verifier, subject_prefixes

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> OidcCheck:
        verifier = IamVerifier(
            clock=clock,
            jwks_url=settings.dead_letters_oidc_jwks_url,
            issuer=settings.dead_letters_oidc_issuer,
            audience=settings.dead_letters_oidc_audience,
        )
        return cls(verifier, settings.dead_letters_oidc_subjects)

    def __call__(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("dead-letter sink: a Bearer token (Knative OIDC) is required")
        identity = self._verifier.verify(token.strip())
        if not any(identity.subject.startswith(prefix) for prefix in self._prefixes):
            raise Forbidden("dead-letter sink: only the Broker may deliver here")


def sink_function(env: Mapping[str, str] | None = None) -> Callable[[CloudEvent], None]:
    """What functions/dead_letters/main.py serves: installs the HTTP guards (and the OIDC
    check when DEAD_LETTERS_OIDC_AUDIENCE is set); Redis is connected on first use."""
    settings = Settings.from_env(os.environ if env is None else env, sink=True)
    clock = SystemClock()
    check = None
    if settings.dead_letters_oidc_audience:
        check = OidcCheck.from_settings(settings, clock)
    install_guards(settings, check)
    lock = threading.Lock()
    stores: list[RedisDeadLetters] = []

    def accept(event: CloudEvent) -> None:
        with lock:
            if not stores:
                stores.append(
                    RedisDeadLetters(store.connect(settings.redis_url, settings.redis_mode))
                )
        letter = from_knative(event, clock.now())
        stores[0].append(letter)
        log.info("%s", describe(letter))

    return accept
