"""Sending flow-start's outbox in parallel: a tick may admit a thousand runs at once, and one
event after the other over HTTP would put seconds between a due time and its admitted event.

Same guarantees as shared/outbox.flush: an entry leaves the outbox only after its send
succeeded; what failed stays for the runtime's flush (which then answers 503) and later ticks.
"""

from __future__ import annotations

import logging

from redis import Redis

from shared import keys
from shared.runtime import outbox
from shared.runtime.outbox import EventSender

log = logging.getLogger(__name__)

WORKERS = 16
LIMIT = 5000


def flush_parallel(
    redis: Redis, sender: EventSender, *, workers: int = WORKERS, limit: int = LIMIT
) -> int:
    """Sends up to `limit` entries of the {adm} outbox with `workers` threads; returns sent.
    What failed goes back to the outbox for the runtime's flush (which then answers 503)."""
    return outbox.flush(
        redis,
        sender,
        [keys.ADMISSION],
        limit,
        workers=workers,
        raise_on_failure=False,
    )
