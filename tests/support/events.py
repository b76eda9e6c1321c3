"""Building CloudEvents and capturing emitted ones in tests."""

from __future__ import annotations

import itertools
import threading
from typing import Any

from cloudevents.http import CloudEvent

from shared.clock import Clock
from shared.errors import TemporaryError
from shared.events import OutgoingEvent
from shared.events.types import PREFIX
from shared.security.tokens import sign_internal

_ids = itertools.count(1)


def cloudevent(
    event_type: str,
    data: Any = None,
    *,
    event_id: str | None = None,
    source: str = "/tests",
    **extensions: str,
) -> CloudEvent:
    if not event_type.startswith(PREFIX):
        event_type = PREFIX + event_type
    attributes = {"type": event_type, "source": source, "id": event_id or f"evt-{next(_ids)}"}
    attributes.update(extensions)
    return CloudEvent(attributes, {} if data is None else data)


def internal(
    event_type: str, data: Any, *, key: str, clock: Clock, sender: str = "tests", **kw: Any
) -> CloudEvent:
    """An event as one of our functions would send it: with a signed internal authtoken."""
    if not event_type.startswith(PREFIX):
        event_type = PREFIX + event_type
    token = sign_internal(key, sender, clock, event_type=event_type)
    return cloudevent(event_type, data, authtoken=token, **kw)


class CapturingSender:
    """An EventSender that keeps what it is given; `down=True` makes every send fail."""

    def __init__(self) -> None:
        self.events: list[OutgoingEvent] = []
        self.down = False
        self._lock = threading.Lock()

    def send(self, event: OutgoingEvent) -> None:
        if self.down:
            raise TemporaryError("sink down (test)")
        with self._lock:
            self.events.append(event)

    def of_type(self, suffix: str) -> list[OutgoingEvent]:
        return [e for e in self.events if e.type == PREFIX + suffix]
