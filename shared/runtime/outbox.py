"""The outbox (docs/architecture.md §7): events are stored with the state change they announce,
then sent.

Sending failures leave events in the outbox; the redelivered request and every tick flush it
again. Receivers dedupe by event id, so sending an event twice is harmless; losing one is not.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol

import requests
import requests.adapters
from cloudevents.conversion import to_binary
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from shared import keys
from shared.clock import Clock
from shared.errors import TemporaryError
from shared.events import OutgoingEvent
from shared.events.types import short
from shared.runtime import event_log, metrics
from shared.scripts import load_script
from shared.security.tokens import keyed_event_id, sign_internal

log = logging.getLogger(__name__)


class EventSender(Protocol):
    def send(self, event: OutgoingEvent) -> None:
        """Delivers one event or raises TemporaryError."""
        ...


class BatchSender(EventSender, Protocol):
    def send_batch(self, events: Sequence[OutgoingEvent]) -> list[TemporaryError | None]:
        """Delivers the events concurrently; per event None (sent) or its failure."""
        ...


POOL_SIZE = 16  # connections to the sink kept per process = events in flight at once
_pool_lock = threading.Lock()
_pool: tuple[int, requests.Session, ThreadPoolExecutor] | None = None


def _process_pool() -> tuple[requests.Session, ThreadPoolExecutor]:
    """The one HTTP connection pool of this process (and the threads that use it), made on
    first use: every sender of the process shares its kept-alive connections. A forked child
    (gunicorn workers) makes its own: sockets and threads do not survive a fork."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            threads = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="outbox-send")
            _pool = (os.getpid(), session, threads)
        return _pool[1], _pool[2]


class HttpSender:
    """Posts events to K_SINK in binary mode with an internal `authtoken` bound to the event's
    type: `send` signs one per event, `send_batch` one per (batch, event type) and posts the
    batch concurrently over the process's one connection pool."""

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
        self._session = session
        self.timeout = timeout

    @property
    def session(self) -> requests.Session:
        return self._session or _process_pool()[0]

    def token(self, event_type: str) -> str:
        return sign_internal(self._key, self.sender_name, self.clock, event_type=event_type)

    def send(self, event: OutgoingEvent) -> None:
        self._post(event, self.token(event.type))

    def send_batch(self, events: Sequence[OutgoingEvent]) -> list[TemporaryError | None]:
        tokens = {event_type: self.token(event_type) for event_type in {e.type for e in events}}

        def send(event: OutgoingEvent) -> TemporaryError | None:
            try:
                self._post(event, tokens[event.type])
            except TemporaryError as failure:
                return failure
            return None

        if len(events) == 1:
            return [send(events[0])]
        return list(_process_pool()[1].map(send, events))

    def _post(self, event: OutgoingEvent, token: str) -> None:
        wire = replace(event, id=keyed_event_id(self._key, event.source, event.id))
        headers, body = to_binary(wire.to_cloudevent(authtoken=token))
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


CLAIM_LEASE_SECONDS = 60.0
BATCH = 500  # entries claimed and handed to a batch sender at once


def claim(redis: Redis, tag: str, limit: int, *, now: float | None = None) -> list[bytes]:
    """Takes up to `limit` entries of a tag's outbox under a lease (see outbox_claim.lua)."""
    entries = load_script("outbox_claim")(
        redis,
        [keys.outbox(tag), keys.outbox_in_flight(tag)],
        [repr(time.time() if now is None else now), repr(CLAIM_LEASE_SECONDS), limit],
    )
    return list(entries)


def release(redis: Redis, tag: str, entries: Sequence[bytes]) -> None:
    """Puts unsent claimed entries back at the head of the outbox, in their order."""
    if entries:
        load_script("outbox_release")(
            redis, [keys.outbox(tag), keys.outbox_in_flight(tag)], list(entries)
        )


def _acknowledge(redis: Redis, tag: str, entries: Sequence[bytes]) -> None:
    """Removes sent entries from the in-flight set, then logs those this flusher removed:
    two round trips for the batch (ZREMs, then the event log's XADDs), not one per event."""
    if not entries:
        return
    pipe = redis.pipeline(transaction=False)
    for entry in entries:
        pipe.zrem(keys.outbox_in_flight(tag), entry)
    events = [OutgoingEvent.from_json(entry) for entry in entries]
    removed = [bool(flag) for flag in pipe.execute()]
    record_sent_many(redis, events, removed)
    for event in events:
        log.info("emitted %s id=%s", short(event.type), event.id)


def flush(
    redis: Redis,
    sender: EventSender,
    tags: Iterable[str] = keys.TAGS,
    limit: int = 1000,
    *,
    workers: int = 1,
    raise_on_failure: bool = True,
) -> int:
    """Sends what waits in the outboxes, oldest first; returns how many were sent.

    Entries are claimed first, so concurrent flushers (a request and a tick, four functions
    on one tick) do not send the same event; an entry is acknowledged only after its send
    succeeded, and what was not sent goes back to the head of its outbox. A sender that
    sends batches (HttpSender) gets each claimed batch at once: one token per event type,
    the events posted concurrently. Otherwise, with one worker a failure stops the flush;
    with several the entries are sent in parallel. What failed goes back, and the first
    failure is raised (TemporaryError) unless `raise_on_failure` is off.
    """
    sent = 0
    batching = callable(getattr(sender, "send_batch", None))
    chunk = BATCH if batching else (100 if workers == 1 else limit)
    for tag in tags:
        while sent < limit:
            wanted = min(limit - sent, chunk)
            entries = claim(redis, tag, wanted)
            if not entries:
                break
            done, failure = _send_all(sender, entries, workers)
            _acknowledge(redis, tag, done)
            sent_now = set(done)
            release(redis, tag, [entry for entry in entries if entry not in sent_now])
            sent += len(done)
            if failure is not None:
                if raise_on_failure:
                    raise failure
                return sent
            if len(entries) < wanted:
                break  # the outbox was empty behind them: no claim that finds nothing
    return sent


def _send_all(
    sender: EventSender, entries: Sequence[bytes], workers: int
) -> tuple[list[bytes], TemporaryError | None]:
    """Sends the entries; returns those sent and the first failure (sequential: stops there)."""
    send_batch = getattr(sender, "send_batch", None)
    if callable(send_batch):
        outcomes: list[TemporaryError | None] = send_batch(
            [OutgoingEvent.from_json(entry) for entry in entries]
        )
        failed = [failure for failure in outcomes if failure is not None]
        sent_ok = [e for e, failure in zip(entries, outcomes, strict=True) if failure is None]
        return sent_ok, failed[0] if failed else None
    if workers <= 1:
        done: list[bytes] = []
        for entry in entries:
            try:
                sender.send(OutgoingEvent.from_json(entry))
            except TemporaryError as failure:
                return done, failure
            done.append(entry)
        return done, None

    def send(entry: bytes) -> TemporaryError | None:
        try:
            sender.send(OutgoingEvent.from_json(entry))
        except TemporaryError as failure:
            return failure
        return None

    with ThreadPoolExecutor(max_workers=min(workers, len(entries))) as pool:
        results = list(pool.map(send, entries))
    failures = [failure for failure in results if failure is not None]
    sent = [entry for entry, failure in zip(entries, results, strict=True) if failure is None]
    return sent, failures[0] if failures else None


def record_sent(redis: Redis, event: OutgoingEvent, *, removed: bool) -> None:
    """What every flusher does after a successful send: the metrics, and the event log entry
    when it was this flusher that removed the event from the outbox (so one entry per event,
    however many concurrent flushers sent it). The event log never fails a flush."""
    record_sent_many(redis, [event], [removed])


def record_sent_many(
    redis: Redis, events: Sequence[OutgoingEvent], removed: Sequence[bool]
) -> None:
    """`record_sent` of many events, the event log entries in one pipeline."""
    pipe = redis.pipeline(transaction=False)
    for event, mine in zip(events, removed, strict=True):
        metrics.observe_emitted(event)
        if mine:
            event_log.record(pipe, event)
    if not len(pipe):
        return
    try:
        pipe.execute()
    except RedisError:
        log.warning("could not add %d sent events to the event log", len(pipe))
