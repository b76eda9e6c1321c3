"""A burst of ticks over real HTTP: single-flight ticks keep the function answering.

flow-start runs as Knative runs it (functions-framework under gunicorn, 4 threads per CPU) at
its default settings (a tick works through 55 s). Twenty ticks arrive at once (a broker
replaying after an outage); a `flow.starting` sent meanwhile must be answered while the one
working tick is still in flight. The assertions are on order and state, never on time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from redis import Redis

from shared import keys
from shared.events import types as t
from tests.support.events import cloudevent
from tests.support.flows import flow_doc
from tests.support.system import FunctionProcess, wait_for

TICKS = 20


@pytest.fixture()
def flow_start(base_env: dict[str, str], redis: Redis, tmp_path: Path) -> Iterator[FunctionProcess]:
    env = {k: v for k, v in base_env.items() if k != "FLOW_START_WORK_THROUGH_SECONDS"}
    process = FunctionProcess("flow-start", env, tmp_path).start()
    yield process
    process.stop()


def test_a_flow_starting_is_answered_while_a_burst_of_ticks_is_in_flight(
    flow_start: FunctionProcess, redis: Redis
) -> None:
    answered: list[str] = []
    lock = threading.Lock()

    def tick(n: int) -> int:
        try:
            status = flow_start.post(cloudevent(t.TICK, {}, event_id=f"tick-{n}")).status_code
        except requests.ConnectionError:  # the process is stopped at the end of the test
            status = -1
        with lock:
            answered.append(f"tick-{n}")
        return status

    pool = ThreadPoolExecutor(max_workers=TICKS)
    try:
        futures: list[Future[int]] = [pool.submit(tick, n) for n in range(TICKS)]
        # all but the one tick holding the lease answer at once (hang guard, not a timing test)
        wait_for(lambda: sum(f.done() for f in futures) >= TICKS - 1, "19 ticks answered", 45)
        working = [f for f in futures if not f.done()]
        assert len(working) == 1, "exactly one tick works; the others answered at once"
        assert redis.exists(keys.tick_lease(keys.ADMISSION)), "the working tick holds the lease"
        assert all(f.result() == 200 for f in futures if f.done())

        reply = flow_start.post(cloudevent(t.FLOW_STARTING, flow_doc("burst")), timeout=45)
        with lock:
            answered.append("flow.starting")
        assert reply.status_code == 200, reply.text
        assert not working[0].done(), "the working tick is still in flight"
        assert answered[-1] == "flow.starting" and len(answered) == TICKS
        assert redis.exists(keys.flow_document("burst")), "the flow was stored meanwhile"
        assert redis.exists(keys.tick_lease(keys.ADMISSION))
    finally:
        flow_start.kill()  # ends the working tick; its lease expires on its own
        pool.shutdown(wait=True)
