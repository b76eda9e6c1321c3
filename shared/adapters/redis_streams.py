"""Step queues on Redis Streams (the default backend): one stream per step.

Every replica of a step reads in one consumer group (`XREADGROUP`), acknowledges with `XACK`
and deletes the entry (so a stream holds only outstanding messages); streams are capped
(`MAXLEN ~`) so a step nobody consumes cannot grow without bound (a trimmed message times out
and is retried by step-execute). `reclaim` (on tick) re-queues entries a consumer received and
never acknowledged (it died): `XAUTOCLAIM`, then a fresh copy for the next free replica.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from shared.errors import TemporaryError
from shared.ports.queue import CONSUMER_GROUP
from shared.ports.step_message import BadMessage, Delivery, StepMessage
from shared.store import as_text

log = logging.getLogger(__name__)

DEFAULT_MAXLEN = 100_000
FIELD = b"m"
RECLAIMER = "step-execute-reclaimer"


@contextmanager
def _redis_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise TemporaryError(f"redis unavailable ({operation})") from exc


class RedisStreamsQueue:
    def __init__(self, redis: Redis, *, maxlen: int = DEFAULT_MAXLEN) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self._grouped: set[str] = set()

    def ensure_group(self, queue: str) -> None:
        """The consumer group, from the stream's start, so nothing published before is missed."""
        if queue in self._grouped:
            return
        with _redis_errors("XGROUP CREATE"):
            try:
                self.redis.xgroup_create(queue, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._grouped.add(queue)

    def publish(self, queue: str, messages: Sequence[StepMessage]) -> None:
        if not messages:
            return
        self.ensure_group(queue)
        with _redis_errors("XADD"), self.redis.pipeline(transaction=False) as pipe:
            for message in messages:
                pipe.xadd(queue, {FIELD: message.to_json()}, maxlen=self.maxlen, approximate=True)
            pipe.execute()

    def receive(
        self, queue: str, consumer: str, *, max_messages: int = 10, wait_seconds: float = 1.0
    ) -> list[Delivery]:
        self.ensure_group(queue)
        block = max(1, int(wait_seconds * 1000)) if wait_seconds > 0 else None
        with _redis_errors("XREADGROUP"):
            try:
                reply = self.redis.xreadgroup(
                    CONSUMER_GROUP, consumer, {queue: ">"}, count=max_messages, block=block
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._grouped.discard(queue)  # the stream was dropped and published anew
                self.ensure_group(queue)
                return []
        deliveries: list[Delivery] = []
        streams: list[Any] = list(reply or [])  # [[stream, [(entry id, fields), ...]], ...]
        for _stream, entries in streams:
            for entry_id, fields in entries:
                deliveries.append(_delivery(entry_id, fields))
        return deliveries

    def ack(self, queue: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        ids = [d.receipt for d in deliveries]
        with _redis_errors("XACK"), self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(queue, CONSUMER_GROUP, *ids)
            pipe.xdel(queue, *ids)
            pipe.execute()

    def reclaim(self, queue: str, *, min_idle_seconds: float, limit: int = 1000) -> int:
        """Re-queues entries idle (unacknowledged) for `min_idle_seconds`; returns how many."""
        moved = 0
        start = "0-0"
        with _redis_errors("XAUTOCLAIM"):
            while moved < limit:
                try:
                    reply = self.redis.xautoclaim(
                        queue, CONSUMER_GROUP, RECLAIMER, int(min_idle_seconds * 1000),
                        start_id=start, count=min(100, limit - moved),
                    )  # fmt: skip
                except ResponseError as exc:
                    if "NOGROUP" in str(exc) or "no such key" in str(exc).lower():
                        return moved
                    raise
                start, entries = as_text(reply[0]), reply[1]
                live = [(entry_id, fields) for entry_id, fields in entries if fields]
                if live:
                    # MULTI: the copy and the removal of the original land together (one key,
                    # one slot), so a crash mid-way neither loses nor doubles an entry
                    with self.redis.pipeline(transaction=True) as pipe:
                        for entry_id, fields in live:
                            pipe.xadd(queue, fields, maxlen=self.maxlen, approximate=True)
                            pipe.xack(queue, CONSUMER_GROUP, entry_id)
                            pipe.xdel(queue, entry_id)
                        pipe.execute()
                    moved += len(live)
                if start == "0-0":
                    break
        if moved:
            log.info("reclaimed %d unacknowledged message(s) of %s", moved, queue)
        return moved

    def drop(self, queue: str) -> None:
        with _redis_errors("DEL"):
            self.redis.delete(queue)
        self._grouped.discard(queue)

    def depth(self, queue: str) -> int:
        """Entries in the stream (outstanding: not yet acknowledged)."""
        with _redis_errors("XLEN"):
            return int(self.redis.xlen(queue))


def _delivery(entry_id: object, fields: dict[bytes, bytes]) -> Delivery:
    receipt = as_text(entry_id)
    raw = fields.get(FIELD)
    try:
        if raw is None:
            raise BadMessage("stream entry has no message field")
        return Delivery(StepMessage.from_json(raw), receipt)
    except BadMessage as exc:
        log.warning("unreadable entry %s: %s", receipt, exc.message)
        return Delivery(None, receipt)
