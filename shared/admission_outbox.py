"""Sending flow-start's outbox in parallel: a tick may admit a thousand runs at once, and one
event after the other over HTTP would put seconds between a due time and its admitted event.

Same guarantees as shared/outbox.flush: an entry leaves the outbox only after its send
succeeded; what failed stays for the runtime's flush (which then answers 503) and later ticks.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from redis import Redis

from shared import keys
from shared.errors import TemporaryError
from shared.events import OutgoingEvent
from shared.outbox import EventSender, record_sent

log = logging.getLogger(__name__)

WORKERS = 16
LIMIT = 5000


def flush_parallel(
    redis: Redis, sender: EventSender, *, workers: int = WORKERS, limit: int = LIMIT
) -> int:
    """Sends up to `limit` entries of the {adm} outbox with `workers` threads; returns sent."""
    key = keys.outbox(keys.ADMISSION)
    raws: list[bytes | str] = redis.lrange(key, 0, limit - 1)
    if not raws:
        return 0

    def send(raw: bytes | str) -> bool:
        try:
            sender.send(OutgoingEvent.from_json(raw))
        except TemporaryError as exc:
            log.warning("outbox: send failed, left for the next flush: %s", exc.message)
            return False
        return True

    with ThreadPoolExecutor(max_workers=min(workers, len(raws))) as pool:
        sent = list(pool.map(send, raws))
    pipe = redis.pipeline(transaction=False)
    done = [raw for raw, ok in zip(raws, sent, strict=True) if ok]
    for raw in done:
        pipe.lrem(key, 1, raw)  # type: ignore[arg-type]
    for raw, removed in zip(done, pipe.execute(), strict=True):
        # metrics and the event log, as shared.outbox.flush records them
        record_sent(redis, OutgoingEvent.from_json(raw), removed=bool(removed))
    return sum(sent)
