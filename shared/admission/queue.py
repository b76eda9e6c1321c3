"""Fair admission of runs (docs/architecture.md §5, flow-start): typed wrappers of the flow-start
Lua scripts.

Every decision is one script over keys sharing the {adm} hash tag. What the script cannot read
itself (the policy file and the penalties policy-check writes in another slot) is read first,
at decision time, and passed in ARGV as `Inputs`: limits per tenant, and weight/rate factors
and suspension per penalized tenant, user and flow. The scripts write the dedupe key, the
state change and the outbox entries of the events they cause in the same atomic step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, cast

from redis import Redis

from shared import keys
from shared.errors import OverCapacity
from shared.events import types
from shared.model import flows
from shared.model.penalties import STEPS
from shared.model.policy import (
    Fairness,
    Penalties,
    Policy,
    TenantLimits,
    cpu_millicores,
    memory_mib,
)
from shared.runtime.idempotency import Once, script_dedupe
from shared.scripts import ArgT, load_script
from shared.store import as_text

DEFAULT_BUDGET = 10_000  # most runs one script call admits (bounds its running time)
REAP_LIMIT = 1000
RETRY_AFTER_SECONDS = 30.0


@dataclass(frozen=True)
class Inputs:
    """The decision-time inputs of the admission scripts (policy x penalties), as ARGV text."""

    slots: int
    limits_json: str
    penalties_json: str


def dominant_factor(policy: Policy, limits: TenantLimits, network_rate: float = 0.0) -> float:
    """A run's cost per slot-second: its dominant share of (slots, CPU, memory, network) over
    the policy's capacity, relative to one slot's share (1 when a slot dominates, and in the
    modes other than `dominant`). The run's CPU and memory are what its steps request, its
    network rate (bytes/s) what its tenant's usage reports carried lately (policing.network)."""
    fairness = policy.fairness
    if fairness.cost != "dominant":
        return 1.0
    shares = [1.0 / policy.slots]
    capacity = fairness.capacity
    cpu, memory, network = (
        capacity.cpu_millicores,
        capacity.memory_mib,
        capacity.network_bytes_per_second,
    )
    if cpu:
        shares.append(cpu_millicores(limits.cpu.request) / cpu)
    if memory:
        shares.append(memory_mib(limits.memory.request) / memory)
    if network:
        shares.append(network_rate / network)
    return max(shares) * policy.slots


def _limits_row(policy: Policy, limits: TenantLimits, network_rate: float = 0.0) -> list[float]:
    return [
        limits.weight,
        limits.max_concurrent_runs,
        limits.start_rate_per_minute,
        limits.max_waiting_runs,
        dominant_factor(policy, limits, network_rate),
    ]


def _fairness_row(fairness: Fairness) -> list[float]:
    """Appended to the `*` row: cost mode (0 count, 1 by usage), half-life (s), aging bound
    (s), estimate of a flow without a finished run (s)."""
    return [
        0 if fairness.cost == "count" else 1,
        fairness.half_life_seconds,
        fairness.max_wait_seconds,
        fairness.default_run_seconds,
    ]


_limits_cache: dict[int, tuple[Policy, str]] = {}
_network_cache: dict[int, tuple[Policy, dict[str, float], str]] = {}


def limits_json(policy: Policy, network_rates: dict[str, float] | None = None) -> str:
    """Per-tenant limits as the scripts read them (computed once per policy object, and once
    per published set of network rates: a tenant with a rate gets its own row)."""
    if network_rates:
        found = _network_cache.get(id(policy))
        if found is not None and found[0] is policy and found[1] == network_rates:
            return found[2]
        table = json.loads(limits_json(policy))
        for tenant, rate in network_rates.items():
            table[tenant] = _limits_row(policy, policy.tenant(tenant), rate)
        text = json.dumps(table, separators=(",", ":"))
        _network_cache[id(policy)] = (policy, dict(network_rates), text)
        return text
    cached = _limits_cache.get(id(policy))
    if cached is not None and cached[0] is policy:
        return cached[1]
    table = {"*": _limits_row(policy, policy.defaults) + _fairness_row(policy.fairness)}
    table.update({name: _limits_row(policy, limits) for name, limits in policy.tenants.items()})
    text = json.dumps(table, separators=(",", ":"))
    _limits_cache[id(policy)] = (policy, text)
    return text


def read_network_rates(redis: Redis, policy: Policy) -> dict[str, float]:
    """The rates policy-check published (policing.network), in cost mode dominant with a
    network capacity only (one round trip; none otherwise)."""
    fairness = policy.fairness
    if fairness.cost != "dominant" or fairness.capacity.network is None:
        return {}
    raw = redis.hgetall(keys.network_rates())
    return {as_text(k): float(as_text(v)) for k, v in raw.items()}


def penalty_row(step: str | None, penalties: Penalties) -> list[float] | None:
    """[rate factor, weight factor, suspended] of one penalty step; None when it changes nothing."""
    rank = STEPS.index(step) if step in STEPS else -1
    if rank < STEPS.index("throttle"):
        return None
    rate = penalties.throttle_factor
    weight = penalties.deprioritize_factor if rank >= STEPS.index("deprioritize") else 1.0
    return [rate, weight, 1 if rank >= STEPS.index("suspend") else 0]


def read_penalties(
    redis: Redis, penalties: Penalties, index: list[bytes] | None = None
) -> dict[str, list[float]]:
    """Factors of every penalized subject, keyed by `keys.penalty_member` (users and flows
    with their tenant, as flow_start_common.lua looks them up; two round trips at most, one
    when the caller read the penalty index already, none when nothing is penalized). A member
    of the previous release (no tenant) is keyed by the tenant its hash names."""
    if index is None:
        index = cast(list[bytes], redis.zrange(keys.penalty_index(), 0, -1))
    members = [as_text(m) for m in index]
    subjects = [keys.parse_penalty_member(m) for m in members if ":" in m]
    if not subjects:
        return {}
    pipe = redis.pipeline(transaction=False)
    for level, subject_id, tenant in subjects:
        pipe.hmget(keys.penalty(level, subject_id, tenant), "step", "tenant")
    table: dict[str, list[float]] = {}
    for (level, subject_id, tenant), (step, owner) in zip(subjects, pipe.execute(), strict=True):
        row = penalty_row(None if step is None else as_text(step), penalties)
        if row is None:
            continue
        if level != "tenant" and not tenant:
            if owner is None:
                continue
            tenant = as_text(owner)
        table[keys.penalty_member(level, subject_id, tenant)] = row
    return table


def read_flow_and_inputs(
    redis: Redis, policy: Policy, flow_id: str
) -> tuple[flows.StoredFlow | None, Inputs]:
    """The stored flow (`flows.get`) and the decision inputs, in one round trip when nothing
    is penalized (flow.execute)."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.flow_document(flow_id))
    pipe.zrange(keys.penalty_index(), 0, -1)
    record, index = pipe.execute()
    return flows.from_record(record), read_inputs(redis, policy, index)


def read_inputs(redis: Redis, policy: Policy, penalty_index: list[bytes] | None = None) -> Inputs:
    penalties = read_penalties(redis, policy.penalties, penalty_index)
    return Inputs(
        slots=policy.slots,
        limits_json=limits_json(policy, read_network_rates(redis, policy)),
        penalties_json=json.dumps(penalties, separators=(",", ":")),
    )


def script_keys(once: Once | None) -> list[str]:
    """KEYS of every admission script (flow_start_common.lua)."""
    dedupe_key, _ = script_dedupe(once, keys.ADMISSION)
    return [dedupe_key, keys.outbox(keys.ADMISSION), *keys.admission_keys()]


# The events the admission scripts write to the outbox, by the kind the scripts name them.
EVENT_TYPES_JSON = json.dumps(
    {
        "admitted": types.RUN_ADMITTED,
        "skipped": types.RUN_SKIPPED,
        "deferred": types.RUN_DEFERRED,
        "missed": types.RUN_MISSED,
    },
    separators=(",", ":"),
)


def header(
    inputs: Inputs, *, now: float, source: str, once: Once | None, budget: int = DEFAULT_BUDGET
) -> list[ArgT]:
    """ARGV[1..8] of every admission script (flow_start_common.lua)."""
    if "\x1f" in source:  # a field separator of the packed admitted entry
        raise ValueError(f"event source {source!r}: no \\x1f allowed")
    return [
        EVENT_TYPES_JSON,
        repr(float(now)),
        script_dedupe(once, keys.ADMISSION)[1],
        source,
        inputs.slots,
        inputs.limits_json,
        inputs.penalties_json,
        budget,
    ]


# --- flow.execute ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecuteRun:
    run_id: str
    flow_id: str
    tenant: str
    user: str
    limit_seconds: int
    msg_json: str


ExecuteResult = Literal["admitted", "deferred", "duplicate"]


def execute(
    redis: Redis, inputs: Inputs, once: Once | None, run: ExecuteRun, *, now: float, source: str
) -> tuple[ExecuteResult, int | None]:
    """Admits the run or queues it; raises OverCapacity (429) over the tenant's waiting cap."""
    reply = load_script("flow_start_execute")(
        redis,
        script_keys(once),
        [
            *header(inputs, now=now, source=source, once=once),
            run.run_id,
            run.flow_id,
            run.tenant,
            run.user,
            run.limit_seconds,
            run.msg_json,
        ],
    )
    result = as_text(reply[0])
    if result == "full":
        raise OverCapacity(
            f"tenant {run.tenant!r} has {int(reply[1])} runs waiting (max_waiting_runs)",
            retry_after=RETRY_AFTER_SECONDS,
        )
    token = int(reply[1]) if len(reply) > 1 else None
    return result, token  # type: ignore[return-value]


# --- release -----------------------------------------------------------------------------------
ReleaseResult = Literal["released", "stale", "unknown", "duplicate"]


def release(
    redis: Redis,
    inputs: Inputs,
    once: Once | None,
    *,
    run_id: str,
    token: int,
    now: float,
    source: str,
) -> tuple[ReleaseResult, int]:
    """Frees the run's slot and lease if `token` is the run's; admits the next waiting runs."""
    reply = load_script("flow_start_release")(
        redis,
        script_keys(once),
        [*header(inputs, now=now, source=source, once=once), run_id, token],
    )
    admitted = int(reply[1]) if len(reply) > 1 else 0
    return as_text(reply[0]), admitted  # type: ignore[return-value]


# --- dispatch, deployment state, stop ----------------------------------------------------------
@dataclass(frozen=True)
class Dispatched:
    reclaimed: int
    admitted: int
    duplicate: bool = False


def dispatch(
    redis: Redis,
    inputs: Inputs,
    once: Once | None = None,
    *,
    now: float,
    source: str,
    reap_limit: int = REAP_LIMIT,
) -> Dispatched:
    """Reclaims slots of runs past their deadline, then admits waiting runs in fair order."""
    reply = load_script("flow_start_dispatch")(
        redis,
        script_keys(once),
        [*header(inputs, now=now, source=source, once=once), reap_limit],
    )
    if as_text(reply[0]) == "duplicate":
        return Dispatched(0, 0, duplicate=True)
    return Dispatched(reclaimed=int(reply[1]), admitted=int(reply[2]))


def set_deployment(
    redis: Redis,
    inputs: Inputs,
    once: Once | None,
    *,
    flow_id: str,
    started: bool,
    now: float,
    source: str,
) -> int:
    """flow.started wakes the flow's waiting runs; failed/stopped park them. Runs admitted."""
    reply = load_script("flow_start_deployment")(
        redis,
        script_keys(once),
        [
            *header(inputs, now=now, source=source, once=once),
            flow_id,
            "started" if started else "down",
        ],
    )
    return int(reply[1]) if len(reply) > 1 else 0


def drop_flow(
    redis: Redis, inputs: Inputs, once: Once | None, *, flow_id: str, now: float, source: str
) -> int:
    """flow.stopping: drops the schedule and the waiting runs. Returns the runs dropped."""
    reply = load_script("flow_start_unschedule")(
        redis,
        script_keys(once),
        [*header(inputs, now=now, source=source, once=once), flow_id],
    )
    return int(reply[1]) if len(reply) > 1 else 0


# --- reading (CLI, tests) ----------------------------------------------------------------------
@dataclass(frozen=True)
class Counts:
    running: int
    running_by_tenant: dict[str, int]
    waiting_by_tenant: dict[str, int]


def counts(redis: Redis) -> Counts:
    raw = {as_text(k): int(v) for k, v in redis.hgetall(keys.admission_counts()).items()}
    return Counts(
        running=raw.get("*", 0),
        running_by_tenant={k[2:]: v for k, v in raw.items() if k.startswith("t:")},
        waiting_by_tenant={k[2:]: v for k, v in raw.items() if k.startswith("w:")},
    )


def admitted_runs(redis: Redis) -> dict[str, dict[str, object]]:
    """Run id → record of every admitted run that still holds a slot."""
    return {as_text(k): json.loads(v) for k, v in redis.hgetall(keys.admitted_runs()).items()}
