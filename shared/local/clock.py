"""The local clock of `make run`: an `orchestrator.tick` to the broker every second.

In Knative a PingSource ticks once a minute; locally the clock ticks every second
(docs/architecture.md §9).
Ticks carry no token: a tick only makes a function look at its own state (docs/architecture.md §8).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from shared.clock import Clock, SystemClock
from shared.events.types import TICK

log = logging.getLogger(__name__)

SOURCE = "/component-orchestrator/local-clock"


def tick_event(now: float) -> CloudEvent:
    """The tick for the second `now` falls in; its id is that second, so a resend is a duplicate."""
    second = int(now)
    return CloudEvent(
        {
            "type": TICK,
            "source": SOURCE,
            "id": f"tick-{second}",
            "time": datetime.fromtimestamp(second, UTC).isoformat(),
            "datacontenttype": "application/json",
        },
        {},
    )


class LocalClock:
    def __init__(
        self,
        broker_url: str,
        *,
        interval: float = 1.0,
        clock: Clock | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.interval = interval
        self.clock = clock or SystemClock()
        self.session = session or requests.Session()
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def tick_once(self) -> bool:
        headers, body = to_binary(tick_event(self.clock.now()))
        try:
            response = self.session.post(self.broker_url, headers=headers, data=body, timeout=5)
            ok = response.status_code < 300
        except requests.RequestException:
            ok = False
        if ok:
            self.sent += 1
        if ok == self._failing:  # log changes only, not every second
            self._failing = not ok
            log.warning("clock: broker %s", "unreachable" if not ok else "reachable again")
        return ok

    def run(self) -> None:
        while not self._stop.is_set():
            self.tick_once()
            self._stop.wait(self.interval - (self.clock.now() % self.interval))

    def start(self) -> LocalClock:
        self._thread = threading.Thread(target=self.run, name="local-clock", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
