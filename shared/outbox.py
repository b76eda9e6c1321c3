"""The outbox (DESIGN §1): events are stored with the state change they announce, then sent.

Sending failures leave events in the outbox; the redelivered request and every tick flush it
again. Receivers dedupe by event id, so sending an event twice is harmless; losing one is not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Protocol

import requests
from cloudevents.conversion import to_binary
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from shared import event_log, keys, metrics
from shared.clock import Clock
from shared.errors import TemporaryError
from shared.events import OutgoingEvent
from shared.events.types import short
from shared.tokens import sign_internal

log = logging.getLogger(__name__)


class EventSender(Protocol):
    def send(self, event: OutgoingEvent) -> None:
        """Delivers one event or raises TemporaryError."""
        ...


class HttpSender:
    """Posts events to K_SINK in binary mode, each with a fresh internal `authtoken`."""

    def __init__(
        self,
        sink_url: str,
        *,
        key: str,
        sender_name: str,
        clock: Clock,
        session: requests.Session | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.sink_url = sink_url
        self._key = key
        self.sender_name = sender_name
        self.clock = clock
        self.session = session or requests.Session()
        self.timeout = timeout

    def send(self, event: OutgoingEvent) -> None:
        token = sign_internal(self._key, self.sender_name, self.clock)
        headers, body = to_binary(event.to_cloudevent(authtoken=token))
        try:
            response = self.session.post(
                self.sink_url, headers=headers, data=body, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise TemporaryError(f"event sink unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 300:
            raise TemporaryError(
                f"event sink answered {response.status_code} for {short(event.type)}"
            )


class NullSender:
    """Keeps everything in the outbox: for a function with no K_SINK configured."""

    def send(self, event: OutgoingEvent) -> None:
        raise TemporaryError("no event sink (K_SINK) configured; events stay in the outbox")


def stage(pipe: Pipeline, tag: str, events: Sequence[OutgoingEvent]) -> None:
    """Queues the events into the tag's outbox as part of the caller's MULTI."""
    if events:
        pipe.rpush(keys.outbox(tag), *[event.to_json() for event in events])


def pending(redis: Redis, tags: Iterable[str] = keys.TAGS) -> int:
    return sum(int(redis.llen(keys.outbox(tag))) for tag in tags)


def flush(
    redis: Redis, sender: EventSender, tags: Iterable[str] = keys.TAGS, limit: int = 1000
) -> int:
    """Sends what waits in the outboxes, oldest first; stops at the first failure (TemporaryError).

    An entry is removed only after its send succeeded, so a crash in between sends it again.
    """
    sent = 0
    for tag in tags:
        key = keys.outbox(tag)
        while sent < limit:
            raw = redis.lindex(key, 0)
            if raw is None:
                break
            event = OutgoingEvent.from_json(raw)
            sender.send(event)
            removed = redis.lrem(key, 1, raw)  # type: ignore[arg-type]
            sent += 1
            record_sent(redis, event, removed=bool(removed))
            log.info("emitted %s id=%s", short(event.type), event.id)
    return sent


def record_sent(redis: Redis, event: OutgoingEvent, *, removed: bool) -> None:
    """What every flusher does after a successful send: the metrics, and the event log entry
    when it was this flusher that removed the event from the outbox (so one entry per event,
    however many concurrent flushers sent it). The event log never fails a flush."""
    metrics.observe_emitted(event)
    if not removed:
        return
    try:
        event_log.record(redis, event)
    except RedisError:
        log.warning("could not add %s id=%s to the event log", short(event.type), event.id)
