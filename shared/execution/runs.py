"""Run records (docs/architecture.md §5, step-execute): what step-execute knows of each run,
changed only by Lua scripts.

A run hash in `{exec}` holds flow, tenant, user, fencing token, status (running / completed /
failed), reason, start and end time, counters (pending messages, steps done, messages, bytes,
failures), the tenant's step retries and timeout at admission, and a snapshot of the flow's
graph (routing uses the snapshot, so a flow updated mid-run does not change the run). Its
pending messages, per-step pending counts and join buffers live beside it. When the run ends
its bookkeeping is deleted and the record and its seen-set expire after the retention.

Each change is one script (dedupe + state + outbox in one step, docs/architecture.md §7):
`run_start` (admitted), `step_route` (step.completed), `step_fail` (step.failed, timeouts,
routing errors, stop, watchdog).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from redis import Redis
from redis.client import Pipeline

from shared import keys
from shared.events import RunAdmitted, StepResult
from shared.events import types as t
from shared.execution.routing import Graph, Route, message_id
from shared.model.policy import TenantLimits
from shared.runtime.idempotency import Once, script_dedupe
from shared.scripts import ScriptCall, load_script, run_pipelined, run_script
from shared.store import as_text

DEFAULT_RETENTION_SECONDS = 24 * 3600
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 300.0
DEAD_LETTER_CAP = 10_000
RECENT_CAP = 10_000

Status = Literal["running", "completed", "failed"]
FailMode = Literal["failed", "timeout", "abort", "end"]


def run_call(redis: Redis, call: ScriptCall) -> str:
    return as_text(run_script(redis, call))


def run_calls(redis: Redis, calls: Sequence[ScriptCall]) -> list[str]:
    """Runs prepared calls in order in one round trip (a batch of results or of expired
    messages): the same as one by one."""
    return [as_text(result) for result in run_pipelined(redis, calls, batch=max(1, len(calls)))]


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    flow_id: str
    tenant: str
    user: str
    fencing_token: int
    status: str
    started_at: float
    ended_at: float | None = None
    reason: str | None = None
    trigger: str = ""
    pending: int = 0
    steps: int = 0
    messages: int = 0
    bytes: int = 0
    failures: int = 0

    @property
    def running(self) -> bool:
        return self.status == "running"

    def to_dict(self) -> dict[str, object]:
        return {
            "runId": self.run_id, "flowId": self.flow_id, "tenant": self.tenant,
            "user": self.user, "fencingToken": self.fencing_token, "status": self.status,
            "startedAt": self.started_at, "endedAt": self.ended_at, "reason": self.reason,
            "trigger": self.trigger, "pending": self.pending, "steps": self.steps,
            "messages": self.messages, "bytes": self.bytes, "failures": self.failures,
        }  # fmt: skip


_SUMMARY = ("flow", "tenant", "user", "fencing", "status", "started", "ended", "reason",
            "trigger", "pending", "steps", "messages", "bytes", "failures")  # fmt: skip


def _record(run_id: str, values: Sequence[object]) -> RunRecord:
    raw = {name: as_text(v) for name, v in zip(_SUMMARY, values, strict=True) if v is not None}

    def field(name: str, default: str = "") -> str:
        return raw.get(name) or default

    ended = field("ended")
    return RunRecord(
        run_id=run_id,
        flow_id=field("flow"),
        tenant=field("tenant"),
        user=field("user"),
        fencing_token=int(float(field("fencing", "0"))),
        status=field("status"),
        started_at=float(field("started", "0")),
        ended_at=float(ended) if ended else None,
        reason=field("reason") or None,
        trigger=field("trigger"),
        pending=int(field("pending", "0")),
        steps=int(field("steps", "0")),
        messages=int(field("messages", "0")),
        bytes=int(field("bytes", "0")),
        failures=int(field("failures", "0")),
    )


def get(redis: Redis, run_id: str) -> RunRecord | None:
    values = redis.hmget(keys.run(run_id), list(_SUMMARY))
    if values[0] is None:
        return None
    return _record(run_id, values)


def _many(redis: Redis, run_ids: Sequence[str]) -> list[RunRecord]:
    pipe = redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hmget(keys.run(run_id), list(_SUMMARY))
    records = []
    for run_id, values in zip(run_ids, pipe.execute(), strict=True):
        if values[0] is not None:
            records.append(_record(run_id, values))
    return records


def running(redis: Redis, limit: int = 100) -> list[RunRecord]:
    """Running runs, oldest first."""
    ids = [as_text(i) for i in redis.zrange(keys.runs_running(), 0, limit - 1)]
    return _many(redis, ids)


def recent(redis: Redis, limit: int = 100) -> list[RunRecord]:
    """Ended runs still within the retention, newest first."""
    ids = [as_text(i) for i in redis.zrevrange(keys.runs_recent(), 0, limit - 1)]
    return _many(redis, ids)


def running_of_flow(redis: Redis, flow_id: str) -> list[str]:
    return sorted(as_text(i) for i in redis.smembers(keys.flow_runs(flow_id)))


def trim_recent(redis: Redis, *, now: float, retention_seconds: float) -> None:
    """The recent-runs index follows the records' retention and stays capped."""
    pipe = redis.pipeline(transaction=False)
    pipe.zremrangebyscore(keys.runs_recent(), "-inf", now - retention_seconds)
    pipe.zremrangebyrank(keys.runs_recent(), 0, -RECENT_CAP - 1)
    pipe.execute()


# --- starting ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class NewMessage:
    message_id: str
    step_id: str
    data_json: str


def usage_field(tenant: str, user: str, flow_id: str) -> str:
    return json.dumps([tenant, user, flow_id], separators=(",", ":"))


def start_messages(run_id: str, graph: Graph, data_json: str) -> list[NewMessage]:
    return [
        NewMessage(message_id(run_id, "start", node), node, data_json)
        for node in graph.start_nodes()
    ]


def start(
    redis: Redis,
    once: Once,
    *,
    admitted: RunAdmitted,
    graph: Graph,
    messages: Sequence[NewMessage],
    limits: TenantLimits,
    now: float,
    context_json: str = "",
) -> str:
    """Creates the run and its first messages: 'started', 'exists' or 'duplicate'.
    `context_json`: the rest of the run's message beside its data, for the first steps."""
    run_id = admitted.run_id
    script_keys = [
        once.dedupe_key, keys.outbox(keys.EXECUTION), keys.run(run_id),
        keys.run_messages(run_id), keys.run_step_counts(run_id), keys.step_due(),
        keys.runs_running(), keys.flow_runs(admitted.flow_id), keys.step_usage("messages"),
        keys.step_usage("bytes"), *[keys.step_message(m.message_id) for m in messages],
    ]  # fmt: skip
    args: list[str | int | float] = [
        once.ttl_seconds, "-", run_id, admitted.flow_id, admitted.tenant, admitted.user,
        admitted.fencing_token, repr(now), graph.to_json(), limits.step_retries,
        limits.step_timeout_seconds, admitted.trigger,
        usage_field(admitted.tenant, admitted.user, admitted.flow_id), len(messages),
    ]  # fmt: skip
    for message in messages:
        args.extend((message.message_id, message.step_id, message.data_json))
    args.append(context_json)
    return as_text(load_script("run_start")(redis, script_keys, args))


def record_not_started(
    pipe: Pipeline, admitted: RunAdmitted, *, reason: str, now: float, retention_seconds: float
) -> None:
    """A run that cannot start (flow unknown or without start node) is recorded as failed."""
    key = keys.run(admitted.run_id)
    pipe.hsetnx(key, "status", "failed")
    pipe.hset(
        key,
        mapping={
            "run": admitted.run_id, "flow": admitted.flow_id, "tenant": admitted.tenant,
            "user": admitted.user, "fencing": admitted.fencing_token, "started": repr(now),
            "ended": repr(now), "reason": reason, "trigger": admitted.trigger,
        },
    )  # fmt: skip
    pipe.expire(key, int(retention_seconds))
    pipe.zadd(keys.runs_recent(), {admitted.run_id: now})


@dataclass(frozen=True)
class RunGraph:
    """A running run's routing snapshot plus the identity the scripts need as keys."""

    graph: Graph
    flow_id: str
    tenant: str
    user: str


class RunGraphs:
    """Snapshots of running runs kept in memory (a run's snapshot never changes), so routing
    a step output reads nothing before its script; an ended run is caught by the script."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._cache: OrderedDict[str, RunGraph] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, redis: Redis, run_id: str) -> RunGraph | None:
        with self._lock:
            cached = self._cache.get(run_id)
            if cached is not None:
                self._cache.move_to_end(run_id)
                return cached
        loaded = load(redis, run_id)
        if loaded is not None:
            with self._lock:
                self._cache[run_id] = loaded
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        return loaded


def load(redis: Redis, run_id: str) -> RunGraph | None:
    values = redis.hmget(keys.run(run_id), ["status", "graph", "flow", "tenant", "user"])
    if values[0] != b"running" or not values[1]:
        return None
    return RunGraph(
        graph=Graph.from_json(values[1]),
        flow_id=as_text(values[2] or b""),
        tenant=as_text(values[3] or b""),
        user=as_text(values[4] or b""),
    )


# --- step outputs -----------------------------------------------------------------------------
def _join_keys(run_id: str, graph: Graph) -> tuple[list[str], list[str]]:
    joins = sorted(graph.joins)
    return joins, [keys.run_join(run_id, node) for node in joins]


def new_messages(result: StepResult, routes: Sequence[Route]) -> list[NewMessage]:
    """The messages an output creates (join inputs aside): ids the same on every delivery."""
    run_id, parent, seq = result.run_id, result.message_id, str(result.seq)
    return [
        NewMessage(message_id(run_id, parent, seq, route.target, str(i)), route.target,
                   route.data_json)
        for i, route in enumerate(routes) if not route.join
    ]  # fmt: skip


def output_call(
    once: Once,
    *,
    run: RunGraph,
    result: StepResult,
    routes: Sequence[Route],
    now: float,
    retention_seconds: float,
    source: str,
    max_pending: int | None = None,
    max_queued_bytes: int | None = None,
) -> ScriptCall:
    """The `step_route` call that records one step output and routes it (`over_budget`, with
    nothing changed, when the run would have more than `max_pending` pending messages;
    `over_queued_bytes` when the tenant's measured queued bytes are over `max_queued_bytes`
    and the output would create messages)."""
    graph = run.graph
    run_id, parent, seq = result.run_id, result.message_id, str(result.seq)
    joins, join_lists = _join_keys(run_id, graph)
    join_ids = [message_id(run_id, parent, seq, "join", node) for node in joins]
    messages = new_messages(result, routes)
    inputs = [route for route in routes if route.join]
    script_keys = [
        once.dedupe_key, keys.outbox(keys.EXECUTION), keys.run(run_id),
        keys.run_messages(run_id), keys.run_step_counts(run_id), keys.run_seen(run_id),
        keys.step_message(parent), keys.step_due(), keys.step_deadlines(),
        keys.runs_running(), keys.runs_recent(), keys.flow_runs(run.flow_id),
        keys.step_usage("messages"), keys.step_usage("bytes"), *join_lists,
        *[keys.step_message(i) for i in join_ids],
        *[keys.step_message(m.message_id) for m in messages], keys.tenant_queued_bytes(),
    ]  # fmt: skip
    args: list[str | int | float] = [
        once.ttl_seconds, result.step_id, run_id, parent, seq, 1 if result.final else 0, repr(now),
        int(retention_seconds), usage_field(run.tenant, run.user, run.flow_id), source,
        len(joins), len(messages), len(inputs), t.RUN_COMPLETED,
        "" if max_pending is None else max_pending,
    ]  # fmt: skip
    for node, join_id in zip(joins, join_ids, strict=True):
        args.extend((node, join_id, json.dumps(graph.ancestors(node))))
    for message in messages:
        args.extend((message.message_id, message.step_id, message.data_json))
    for route in inputs:
        args.extend((joins.index(route.target) + 1, result.step_id, route.data_json))
    args.append("" if max_queued_bytes is None else max_queued_bytes)
    return ScriptCall("step_route", script_keys, args)


def record_output(
    redis: Redis,
    once: Once,
    *,
    run: RunGraph,
    result: StepResult,
    routes: Sequence[Route],
    now: float,
    retention_seconds: float,
    source: str,
    max_pending: int | None = None,
    max_queued_bytes: int | None = None,
) -> str:
    """Routes one step output: 'routed', 'completed', or why nothing happened."""
    call = output_call(
        once, run=run, result=result, routes=routes, now=now,
        retention_seconds=retention_seconds, source=source, max_pending=max_pending,
        max_queued_bytes=max_queued_bytes,
    )  # fmt: skip
    return run_call(redis, call)


# --- failures and ends ------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    """A step message that failed (retry it, or dead-letter it and fail the run), or a run that
    ends from outside (stop, watchdog): what the `step_fail` script is told."""

    once: Once | None  # None: no dedupe (tick timeouts decide by the message's own deadline)
    run_id: str
    flow_id: str
    graph: Graph | None
    mode: FailMode
    now: float
    retention_seconds: float
    source: str
    message: str = ""
    step: str = ""
    attempt: int | None = None
    error: str = ""
    reason: str = "step_failed"
    emit: bool = True
    fencing_token: int | None = None


def fail_call(failure: Failure) -> ScriptCall:
    """The `step_fail` call of `failure`, to run alone or pipelined with others."""
    f = failure
    dedupe_key, dedupe_ttl = script_dedupe(f.once, keys.EXECUTION)
    join_lists = _join_keys(f.run_id, f.graph)[1] if f.graph is not None else []
    script_keys = [
        dedupe_key, keys.outbox(keys.EXECUTION), keys.run(f.run_id),
        keys.run_messages(f.run_id), keys.run_step_counts(f.run_id), keys.run_seen(f.run_id),
        keys.step_message(f.message), keys.step_due(), keys.step_deadlines(),
        keys.runs_running(), keys.runs_recent(), keys.flow_runs(f.flow_id), keys.dead_letters(),
        keys.step_message_family(), *join_lists,
    ]  # fmt: skip
    args: list[str | int | float] = [
        dedupe_ttl, f.step, f.mode, f.run_id, f.message, -1 if f.attempt is None else f.attempt,
        f.error[:2000], repr(f.now), int(f.retention_seconds), f.source, f.reason,
        1 if f.emit else 0, -1 if f.fencing_token is None else f.fencing_token,
        BACKOFF_BASE_SECONDS, BACKOFF_MAX_SECONDS, DEAD_LETTER_CAP, len(join_lists), t.RUN_FAILED,
    ]  # fmt: skip
    return ScriptCall("step_fail", script_keys, args)


def fail(redis: Redis, failure: Failure) -> str:
    """Returns 'retry', 'failed', or why nothing happened ('duplicate', 'not_running',
    'stale', 'wrong_step')."""
    return run_call(redis, fail_call(failure))
