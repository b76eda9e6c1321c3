"""step-execute's upkeep on ticks and stops: step timeouts, stale queue entries, usage reports,
a stopped flow's queues. Plain functions over Redis and the queue port, so handlers never send
Redis commands themselves."""

from __future__ import annotations

import logging
import uuid

from redis import Redis

from shared import keys
from shared.errors import OrchestratorError
from shared.events import types as t
from shared.execution import runs
from shared.ports.queue import StepQueue
from shared.scripts import ScriptCall, load_script
from shared.store import as_text

log = logging.getLogger(__name__)

TIMEOUT_BATCH = 500


def expire_timeouts(redis: Redis, *, now: float, retention_seconds: float, source: str) -> int:
    """Messages past their step timeout are failed (retried or dead-lettered), in one batch."""
    ids = [
        as_text(i)
        for i in redis.zrangebyscore(keys.step_deadlines(), "-inf", now, 0, TIMEOUT_BATCH)
    ]
    if not ids:
        return 0
    pipe = redis.pipeline(transaction=False)
    for message_id in ids:
        pipe.hmget(keys.step_message(message_id), ["run", "attempt", "step"])
    loaded: dict[str, runs.RunGraph | None] = {}
    gone: list[str] = []
    calls: list[ScriptCall] = []
    for message_id, (run_id, attempt, step) in zip(ids, pipe.execute(), strict=True):
        run = None
        if run_id is not None:
            rid = as_text(run_id)
            if rid not in loaded:
                loaded[rid] = runs.load(redis, rid)
            run = loaded[rid]
        if run is None:
            gone.append(message_id)  # its run ended: nothing to time out
            continue
        calls.append(
            runs.fail_call(
                runs.Failure(
                    None,
                    run_id=as_text(run_id),
                    flow_id=run.flow_id,
                    graph=run.graph,
                    mode="timeout",
                    message=message_id,
                    attempt=int(as_text(attempt or b"0")),
                    error=f"step {as_text(step or b'')} timed out",
                    reason="step_timeout",
                    now=now,
                    retention_seconds=retention_seconds,
                    source=source,
                )
            )
        )
    if gone:
        redis.zrem(keys.step_deadlines(), *gone)
    outcomes = runs.run_calls(redis, calls)
    return sum(outcome in ("retry", "failed") for outcome in outcomes)


def reclaim(redis: Redis, queue: StepQueue, *, idle_seconds: float) -> int:
    """Re-queues entries received and never acknowledged (a worker died), at most once per
    half reclaim interval across all ticks: it costs a round trip per step queue."""
    interval = max(1, int(idle_seconds / 2))
    if not redis.set(keys.step_reclaim_turn(), b"1", nx=True, ex=interval):
        return 0
    moved = 0
    for name in _members(redis, keys.step_queues()):
        try:
            moved += queue.reclaim(name, min_idle_seconds=idle_seconds)
        except OrchestratorError as exc:
            log.warning("reclaim of %s failed: %s", name, exc.message)
    return moved


def report_usage(redis: Redis, *, now: float, source: str) -> int:
    """The counts not yet reported become usage.reported events in the outbox."""
    return int(
        load_script("step_usage_flush")(
            redis,
            [keys.step_usage("messages"), keys.step_usage("bytes"), keys.outbox(keys.EXECUTION)],
            [repr(now), source, f"usage-{uuid.uuid4().hex[:16]}-", t.USAGE_REPORTED],
        )
    )


def drop_flow_queues(redis: Redis, queue: StepQueue, flow_id: str) -> int:
    """A stopped flow's step queues are dropped and forgotten. Returns how many."""
    prefix = keys.step_queue(flow_id, "")
    names = [q for q in _members(redis, keys.step_queues()) if q.startswith(prefix)]
    for name in names:
        queue.drop(name)
    if names:
        redis.srem(keys.step_queues(), *names)
    return len(names)


def next_work_in(redis: Redis, *, now: float) -> float | None:
    """Seconds until the next message comes due or times out (None: nothing scheduled)."""
    heads = [
        redis.zrange(key, 0, 0, withscores=True) for key in (keys.step_due(), keys.step_deadlines())
    ]
    times = [float(head[0][1]) for head in heads if head]
    return max(0.0, min(times) - now) if times else None


def _members(redis: Redis, key: str) -> list[str]:
    return sorted(as_text(member) for member in redis.smembers(key))
