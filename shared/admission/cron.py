"""Cron schedules in Redis (docs/architecture.md §5, flow-start): store them, and fire what is due.

A tick reads the due entries (flow_start_due, O(due)), plans each in Python (croniter,
memoized for the tick: flows sharing an expression share the work), and fires them with
flow_start_fire, which claims every entry by compare-and-set on its score. So concurrent ticks
and replicas fire each due time once, and the cost grows with the number due, not with the
number of flows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, cast

from redis import Redis

from shared import keys
from shared.admission import lease, schedule
from shared.admission.queue import REAP_LIMIT, Inputs, header, script_keys
from shared.events import FlowDocument
from shared.model.policy import Policy
from shared.runtime.idempotency import Once
from shared.scripts import ArgT, ScriptCall, load_script, run_pipelined, run_script
from shared.store import as_text

log = logging.getLogger(__name__)

BATCH = 1000
_FIELDS = ("c", "z", "o", "t", "u", "p", "w", "m")

StoreResult = Literal["scheduled", "kept", "dropped", "duplicate"]


def schedule_args(flow: FlowDocument, now: float) -> list[ArgT]:
    """The flow_start_schedule arguments (after the header) of a flow; validate it first."""
    if flow.cron is None:
        return [flow.id, *[""] * 9]
    settings = flow.settings
    offset = schedule.spread_offset(flow.id, flow.cron, flow.timezone, enabled=settings.spread)
    return [
        flow.id,
        flow.cron,
        flow.timezone,
        offset,
        flow.tenant,
        flow.user,
        repr(schedule.first_due(flow.cron, flow.timezone, offset, now)),
        settings.overlap_policy or "",
        "" if settings.catchup_window_seconds is None else settings.catchup_window_seconds,
        "" if settings.max_run_seconds is None else settings.max_run_seconds,
    ]


def store_schedule(
    redis: Redis,
    inputs: Inputs,
    once: Once | None,
    flow: FlowDocument,
    *,
    now: float,
    source: str,
) -> StoreResult:
    """Stores the flow's schedule (or drops it when the flow has no cron). Validate first."""
    reply = load_script("flow_start_schedule")(
        redis,
        script_keys(once),
        [*header(inputs, now=now, source=source, once=once), *schedule_args(flow, now)],
    )
    return as_text(reply[0])  # type: ignore[return-value]


@dataclass
class FireReport:
    """What one tick's firing did."""

    fired: int = 0
    lost: int = 0  # claimed by a concurrent tick
    admitted: int = 0
    deferred: int = 0
    skipped: int = 0
    missed: int = 0
    batches: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, reply: list[int]) -> None:
        self.fired += int(reply[0])
        self.lost += int(reply[1])
        self.admitted += int(reply[2])
        self.deferred += int(reply[3])
        self.skipped += int(reply[4])
        self.missed += int(reply[5])
        self.batches += 1


def unpack_schedule(packed: bytes | str) -> list[str]:
    """A schedule as keys.schedules() holds it: cron, zone, offset, tenant, user, overlap,
    catch-up, max run ('' where unset; all '' for an empty value)."""
    raw = packed.encode() if isinstance(packed, str) else packed
    if not raw:
        return [""] * len(_FIELDS)
    cron, zone, offset, overlap, window, max_run, tenant_len, ids = raw.split(b"\x1f", 7)
    cut = int(tenant_len)
    return [
        cron.decode(),
        zone.decode(),
        offset.decode(),
        ids[:cut].decode(),
        ids[cut:].decode(),
        overlap.decode(),
        window.decode(),
        max_run.decode(),
    ]


def stored_schedule(redis: Redis, flow_id: str) -> dict[str, str] | None:
    """A flow's stored schedule by field name (c cron, z zone, o offset, t tenant, u user,
    p overlap, w catch-up, m max run; unset ones left out), in either form; None without one.
    Read only (the operator CLI, tests)."""
    packed = redis.hget(keys.schedules(), flow_id)
    if packed is not None:
        values = unpack_schedule(cast(bytes, packed))
    else:  # the previous release's hash per flow
        old = cast(list[bytes | None], redis.hmget(keys.schedule(flow_id), list(_FIELDS)))
        if old[0] is None:
            return None
        values = ["" if v is None else as_text(v) for v in old]
    return {name: value for name, value in zip(_FIELDS, values, strict=True) if value}


def _due_call(now: float, limit: int) -> ScriptCall:
    return ScriptCall(
        "flow_start_due",
        [keys.schedule_due(), keys.schedules(), keys.schedule_family(), keys.schedule_buffered()],
        [repr(float(now)), limit],
    )


def due_entries_of(flat: list[bytes]) -> list[list[str]]:
    """`due_packed`'s reply decoded, as `due_entries` returns it."""
    return _due_parsed(flat)


def _due_parsed(flat: list[bytes]) -> list[list[str]]:
    return [
        [as_text(flat[i]), as_text(flat[i + 1]), *unpack_schedule(flat[i + 2])]
        for i in range(0, len(flat), 3)
    ]


def due_packed(redis: Redis, now: float, limit: int = BATCH) -> list[bytes]:
    """flow_start_due's reply as it comes: flow, due, packed schedule per entry."""
    return cast(list[bytes], run_script(redis, _due_call(now, limit)))


def due_entries(redis: Redis, now: float, limit: int = BATCH) -> list[list[str]]:
    """Up to `limit` due entries, earliest first (read only; fire claims): flow, due, cron,
    zone, offset, tenant, user, overlap, catch-up, max run."""
    return _due_parsed(run_script(redis, _due_call(now, limit)))


def dispatch_and_due_entries(
    redis: Redis, inputs: Inputs, now: float, source: str, limit: int = BATCH
) -> list[list[str]]:
    """A tick's first round trip: `queue.dispatch` (expired slots reclaimed, waiting runs
    admitted), then `due_entries`, pipelined (two scripts, in this order, one round trip)."""
    return _due_parsed(dispatch_and_due_packed(redis, inputs, now, source, limit))


def dispatch_and_due_packed(
    redis: Redis, inputs: Inputs, now: float, source: str, limit: int = BATCH
) -> list[bytes]:
    """`dispatch_and_due_entries`, the due read's reply as it comes (`due_packed`)."""
    dispatch = ScriptCall(
        "flow_start_dispatch",
        script_keys(None),
        [*header(inputs, now=now, source=source, once=None), REAP_LIMIT],
    )
    _, flat = run_pipelined(redis, [dispatch, _due_call(now, limit)])
    return cast(list[bytes], flat)


def next_due_time(redis: Redis) -> float | None:
    """The earliest due time of any schedule, or None."""
    first = redis.zrange(keys.schedule_due(), 0, 0, withscores=True)
    return float(first[0][1]) if first else None


def next_due(redis: Redis, flow_id: str) -> float | None:
    """One flow's next due time (spread offset included), or None without a schedule.
    Read only (the operator CLI)."""
    score = redis.zscore(keys.schedule_due(), flow_id)
    return None if score is None else float(score)


def pack_entry(
    flow: str,
    read: str,
    fire: str,
    missed: str,
    next_due: str,
    limit: int,
    overlap: str,
    window: int,
    tenant: str,
    user: str,
) -> tuple[str, str]:
    """One entry of flow_start_fire as (plan, ids): the plan's fields joined by \x1f (shared by
    the entries planned alike, sent once per call), and the byte lengths of tenant and user,
    then tenant, user and flow back to back (ids may hold any character)."""
    return _head(read, fire, missed, next_due, limit, overlap, window), _ids(tenant, user, flow)


def _head(read: str, fire: str, missed: str, next_due: str, limit: int, overlap: str,
          window: int) -> str:  # fmt: skip
    return f"{read}\x1f{fire}\x1f{missed}\x1f{next_due}\x1f{limit}\x1f{overlap}\x1f{window}"


def _ids(tenant: str, user: str, flow: str) -> str:
    return f"{len(tenant.encode())}\x1f{len(user.encode())}\x1f{tenant}{user}{flow}"


def _plan_key(entry: list[str], now: float) -> tuple[object, ...]:
    """What the plan of an entry on time depends on (all but its flow and user)."""
    _, score, cron, zone, offset, tenant, _, overlap, catchup, max_run = entry
    return (now, score, cron, zone, offset, tenant, overlap, catchup, max_run)


def plan_entry(
    entry: list[str], policy: Policy, now: float, next_times: schedule.NextTimes
) -> tuple[str, str]:
    """The plan and ids of one due entry (`pack_entry`). Entries that share due time,
    schedule, tenant and settings share one plan (remembered in `next_times`, the tick's): a
    tick of a thousand flows plans each distinct one once (a schedule re-planned or dropped
    is planned alone: it is logged)."""
    flow, score, cron, zone, offset, tenant, user, overlap, catchup, max_run = entry
    shared = _plan_key(entry, now)
    head = next_times.plans.get(shared)
    if head is not None:
        return head, _ids(tenant, user, flow)
    limits = policy.tenant(tenant)
    window = int(catchup) if catchup else limits.catchup_window_seconds
    limit = lease.run_limit(int(max_run) if max_run else None, limits)
    policy_name = overlap or limits.overlap_policy
    try:
        due, shift = float(score), int(offset or 0)
        if schedule.seconds_first(cron) and not schedule.is_time_of(cron, zone, due - shift):
            # planned when a 6-field cron was read seconds last: plan it again, fire nothing
            following = schedule.next_time(cron, zone, max(due, now) - shift) + shift
            log.warning("schedule of flow %s re-planned: 6-field cron %r is seconds first "
                        "now; next due %s", flow, cron, following)  # fmt: skip
            return pack_entry(flow, score, "", "", repr(following), limit, policy_name,
                              window, tenant, user)  # fmt: skip
        following = schedule.memoized_next_time(cron, zone, due - shift) + shift
        if following > now and due >= now - max(window, schedule.ON_TIME_SECONDS):
            # the usual case (on time, one due time passed): what schedule.plan would say
            head = _head(score, score, "", repr(following), limit, policy_name, window)
            next_times.plans[shared] = head
            return head, _ids(tenant, user, flow)
        planned = schedule.plan(due, now, window, next_times.for_schedule(cron, zone, shift))
    except Exception as exc:  # a stored schedule that can no longer be computed: drop it
        log.error("schedule of flow %s dropped: %s", flow, exc)
        return pack_entry(flow, score, "", "", "", limit, policy_name, window, "", "")
    head = _head(
        score,
        "" if planned.fire is None else repr(planned.fire),
        "" if planned.missed_from is None else repr(planned.missed_from),
        repr(planned.next_due),
        limit,
        policy_name,
        window,
    )
    next_times.plans[shared] = head  # a late tick's entries alike share their plan too
    return head, _ids(tenant, user, flow)


def fire_args(
    entries: list[list[str]], policy: Policy, now: float, next_times: schedule.NextTimes
) -> list[ArgT]:
    """flow_start_fire's arguments after the header: the number of distinct plans, the plans,
    then per entry the index of its plan (from 1), \x1f and its ids."""
    plans: dict[str, int] = {}
    packed: list[ArgT] = []
    for entry in entries:
        plan, ids = plan_entry(entry, policy, now, next_times)
        index = plans.get(plan)
        if index is None:
            index = plans[plan] = len(plans) + 1
        packed.append(f"{index}\x1f{ids}")
    return [len(plans), *plans, *packed]


def fire_args_packed(
    flat: list[bytes], policy: Policy, now: float, next_times: schedule.NextTimes
) -> list[ArgT]:
    """`fire_args` of the due read's reply as it comes (`due_packed`), the same arguments: an
    entry whose plan the tick has made already (on time, same due time, schedule settings
    and tenant) is packed from its bytes, nothing decoded; the others are planned by
    `plan_entry`. A tick of a thousand flows of a hundred tenants decodes a hundred."""
    plans: dict[str, int] = {}
    packed: list[ArgT] = []
    known = next_times.plans_packed
    for i in range(0, len(flat), 3):
        flow, score, stored = flat[i], flat[i + 1], flat[i + 2]
        # cron, zone, offset, overlap, catch-up, max run, tenant's byte length, tenant + user
        parts = stored.split(b"\x1f", 7) if stored else []
        key: tuple[object, ...] | None = None
        if len(parts) == 8:
            cut = int(parts[6])
            key = (now, score, *parts[:6], parts[7][:cut])
            head = known.get(key)
            if head is not None:
                index = plans.get(head)
                if index is None:
                    index = plans[head] = len(plans) + 1
                ids = parts[7]
                packed.append(
                    b"%d\x1f%b\x1f%d\x1f%b%b" % (index, parts[6], len(ids) - cut, ids, flow)
                )
                continue
        entry = [as_text(flow), as_text(score), *unpack_schedule(stored)]
        plan, entry_ids = plan_entry(entry, policy, now, next_times)
        index = plans.get(plan)
        if index is None:
            index = plans[plan] = len(plans) + 1
        packed.append(f"{index}\x1f{entry_ids}")
        if key is not None and _plan_key(entry, now) in next_times.plans:
            known[key] = plan  # a plan of the tick's: shared by the entries that share its key
    return [len(plans), *plans, *packed]


def fire_due(
    redis: Redis,
    inputs: Inputs,
    policy: Policy,
    *,
    now: float,
    source: str,
    batch: int = BATCH,
    max_batches: int = 1000,
    dispatch: bool = False,
) -> FireReport:
    """Fires every entry due at `now`, `batch` per script call. With `dispatch`, the tick's
    `queue.dispatch` goes first, in the round trip of the first read."""
    report = FireReport()
    next_times = schedule.NextTimes()
    for n in range(max_batches):
        if n == 0 and dispatch:
            flat = dispatch_and_due_packed(redis, inputs, now, source, batch)
        else:
            flat = due_packed(redis, now, batch)
        if not flat:
            break
        args: list[ArgT] = [*header(inputs, now=now, source=source, once=None)]
        args += fire_args_packed(flat, policy, now, next_times)
        reply = load_script("flow_start_fire")(redis, script_keys(None), args)
        report.add(reply)
        if len(flat) < 3 * batch or not int(reply[6]):  # nothing more due: no empty read
            break
    return report


# --- CRON_OWNER=hub ---------------------------------------------------------------------------
HubFireResult = Literal["admitted", "deferred", "buffered", "skipped", "duplicate"]


@dataclass(frozen=True)
class HubRun:
    """One due time the hub's scheduler sent (its flow.execute), for flow_start_hub_fire."""

    flow_id: str
    due: float
    limit_seconds: int
    overlap: str
    tenant: str
    user: str
    msg_json: str


def fire_hub_run(
    redis: Redis, inputs: Inputs, once: Once | None, run: HubRun, *, now: float, source: str
) -> HubFireResult:
    """Fires the hub scheduler's due time as a tick fires ours (overlap, cap, fairness)."""
    reply = load_script("flow_start_hub_fire")(
        redis,
        script_keys(once),
        [
            *header(inputs, now=now, source=source, once=once),
            run.flow_id,
            f"{int(run.due)}",
            run.limit_seconds,
            run.overlap,
            run.tenant,
            run.user,
            run.msg_json,
        ],
    )
    return as_text(reply[0])  # type: ignore[return-value]
