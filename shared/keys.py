"""Every Redis key of the project, built here and nowhere else (docs/architecture.md §6).

All keys start with `co:`. The part in braces is the Redis Cluster hash tag: keys that one Lua
script or MULTI touches together share a tag, so each atomic step stays in one slot.
- `{adm}`: all of flow-start's scheduling and admission state (one tag);
- `{dep}`: deploy's desired-state hashes, deploying deadlines, locks;
- `{exec}`: step-execute's run records, step bookkeeping, dead letters;
- `{pol}`: policy-check's ledger, penalties and audit;
- `{flows}`: the flow documents (upserted by deploy and flow-start, read by all).
Every tag has its own dedupe keys and outbox, so a handler writes its dedupe key, its state
and its outgoing events in one slot.
"""

from __future__ import annotations

import hashlib

PREFIX = "co:"

ADMISSION = "adm"
DEPLOY = "dep"
EXECUTION = "exec"
POLICY = "pol"
FLOWS = "flows"
TAGS = (ADMISSION, DEPLOY, EXECUTION, POLICY, FLOWS)


def _key(tag: str, *parts: str) -> str:
    return PREFIX + "{" + tag + "}:" + ":".join(parts)


def digest(*parts: str) -> str:
    """A short stable digest, for keys built from arbitrary text (event sources and ids)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


# --- idempotency and outbox (one of each per tag) --------------------------------------------
def dedupe(tag: str, source: str, event_id: str, *, principal: str = "") -> str:
    """The dedupe key of one event; with `principal` (who sent it, as authenticated) one
    caller cannot pre-empt another's event by sending its (source, id) first. Without it, the
    form of the previous release (read for one release, CHANGELOG.md)."""
    if principal:
        return _key(tag, "dedupe", digest(principal, source, event_id))
    return _key(tag, "dedupe", digest(source, event_id))


def outbox(tag: str) -> str:
    return _key(tag, "outbox")


def outbox_in_flight(tag: str) -> str:
    """Sorted set of the tag's outbox entries being sent, scored by their lease deadline."""
    return _key(tag, "outbox-in-flight")


def tick_lease(tag: str) -> str:
    """String: a random token while one tick of the tag's function works (single-flight)."""
    return _key(tag, "tick-lease")


def tick_cursor(tag: str, walk: str) -> str:
    """String: where the tag's paged tick walk `walk` goes on at the next tick ('' or absent: from
    the start; shared/runtime/tick_cursor.py)."""
    return _key(tag, "tick-cursor", walk)


def replication_probe(tag: str) -> str:
    """String: written right before WAIT, so WAIT covers every earlier write of the tag's slot."""
    return _key(tag, "replication-probe")


def outboxes() -> list[str]:
    return [outbox(tag) for tag in TAGS]


# --- flow documents -------------------------------------------------------------------------
def flow_document(flow_id: str) -> str:
    return _key(FLOWS, "flow", flow_id)


def flow_index() -> str:
    """Set of the ids of all flows that are wanted (not stopped)."""
    return _key(FLOWS, "wanted")


def tenant_flows_family() -> str:
    return _key(FLOWS, "tenant-flows", "")


def tenant_flows(tenant: str) -> str:
    """Set: ids of the tenant's wanted flows (counted against its `max_flows`)."""
    return tenant_flows_family() + tenant


def flows_upgraded() -> str:
    """String: set once the flow documents of the previous release were upgraded (tombstone
    TTLs, the tenants' flow sets, edge expressions to `edges[].jsonata`; shared/model/flows.py
    `upgrade`). Its version moves on with what `upgrade` does, so a store upgraded by an
    earlier build of this release is upgraded again (every step is idempotent)."""
    return _key(FLOWS, "upgraded", "2")


# --- step queues (one per flow step; the stream is the queue, so it carries its own tag) ----
def step_queue(flow_id: str, node_id: str) -> str:
    return PREFIX + "q:{" + flow_id + "}:" + node_id


def parse_step_queue(queue: str) -> tuple[str, str] | None:
    """(flow id, node id) of a `step_queue` name (flow ids hold no braces); None otherwise."""
    head = PREFIX + "q:{"
    if not queue.startswith(head) or "}:" not in queue:
        return None
    flow_id, _, node_id = queue[len(head) :].partition("}:")
    return (flow_id, node_id) if flow_id and node_id else None


# --- the ferryman backchannel (`orchestrator backchannel`, QUEUE_BACKEND=amqp) ----------------
BACKCHANNEL = "bc"  # its own tag: no function's state, touched by that process alone


def backchannel_outputs(delivery: str) -> str:
    """Counter: the outputs one ferryman delivery of a message has sent so far (their seq);
    `delivery` is a digest of (run, message, attempt, ferryman's start time)."""
    return _key(BACKCHANNEL, "outputs", delivery)


# A global component's one queue, for the steps of every flow that use it. '#' starts no flow
# id ([A-Za-z0-9] first), so it never names a flow's step queue.
GLOBAL_QUEUE_MARK = "#"


def global_step_queue(component_id: str) -> str:
    return PREFIX + "q:{" + GLOBAL_QUEUE_MARK + component_id + "}:global"


def flow_global_nodes(flow_id: str) -> str:
    """Hash: a deployed flow's nodes whose component is global: node id → JSON
    {component, function, fields} (deploy writes it, step-execute routes by it)."""
    return _key(FLOWS, "global-nodes", flow_id)


# --- dead letters of the local broker (make run) --------------------------------------------
def broker_dead_letters() -> str:
    return PREFIX + "broker:dead-letters"


# --- penalties (written by policy-check only; read by flow-start, step-execute, deploy) -----
# A user and a flow are subjects *of a tenant*: a user who belongs to two tenants, or a flow id
# used again by another tenant after its tombstone expired, is charged and punished in each
# tenant apart. Their keys carry the tenant; built without one, the key or member is the form
# of the previous release (read for one release and upgraded by policy-check's tick, CHANGELOG).
TENANT_SEPARATOR = "\x1f"


def _scoped(level: str, subject_id: str, tenant: str) -> str:
    if level == "tenant" or not tenant:
        return subject_id
    return _pair(tenant, subject_id)


def penalty(level: str, subject_id: str, tenant: str = "") -> str:
    """Hash: step (warn/throttle/deprioritize/suspend), until, rule, since, repeats, tenant."""
    return _key(POLICY, "penalty", level, _scoped(level, subject_id, tenant))


def penalty_member(level: str, subject_id: str, tenant: str = "") -> str:
    """The subject in the penalty index and in admission's penalty table: `tenant:<id>`, or
    `user:<tenant>US<id>` / `flow:<tenant>US<id>` (US: the unit separator); without the
    tenant, `user:<id>`: the previous release's form."""
    if level == "tenant" or not tenant:
        return f"{level}:{subject_id}"
    return f"{level}:{tenant}{TENANT_SEPARATOR}{subject_id}"


def parse_penalty_member(member: str) -> tuple[str, str, str]:
    """(level, id, tenant) of a `penalty_member`; tenant '' for a tenant or an old member."""
    level, _, rest = member.partition(":")
    if level != "tenant" and TENANT_SEPARATOR in rest:
        tenant, _, subject_id = rest.partition(TENANT_SEPARATOR)
        return level, subject_id, tenant
    return level, rest, ""


def penalty_index() -> str:
    """Sorted set of `penalty_member`s with a current penalty, scored by when last changed."""
    return _key(POLICY, "penalties")


def policy_upgraded() -> str:
    """String: set once the penalty and ledger keys of the previous release (without the
    tenant) were upgraded (shared/model/penalties.py `upgrade`)."""
    return _key(POLICY, "upgraded", "tenant-keys")


# --- iam: flow tokens (deploy creates one per flow in IAM, revokes it on stop) ---------------
def flow_token(flow_id: str) -> str:
    """String: JSON {id, token (encrypted with ORCHESTRATOR_KEY), owner, tenant, createdAt}."""
    return _key(DEPLOY, "flow-token", flow_id)


# --- step workers' queue credentials (deploy rotates them; passwords are never stored) ------
def queue_credentials(flow_id: str) -> str:
    """String: the generation of the flow's queue ACL user (its password derives from it)."""
    return _key(DEPLOY, "queue-user", flow_id)


# --- policy-check: ledger, watchdog, audit, metrics reader (written by policy-check only) ---
def ledger(level: str, subject_id: str, window_seconds: int, tenant: str = "") -> str:
    """Hash: a ring of fixed buckets for one subject and one window (shared/policing/ledger.py);
    users and flows with their tenant (without: the previous release's form)."""
    return _key(POLICY, "ledger", level, _scoped(level, subject_id, tenant), str(window_seconds))


def ledger_active() -> str:
    """Sorted set of subjects (`level`, `id`, `tenant` joined by US) scored by last write."""
    return _key(POLICY, "ledger-active")


def watched_run(run_id: str) -> str:
    """Hash: one admitted run the watchdog follows (flow, tenant, user, token, times, limit)."""
    return _key(POLICY, "run", run_id)


def watched_runs() -> str:
    """Sorted set of running run ids scored by their deadline (admitted + limit)."""
    return _key(POLICY, "runs")


def audit() -> str:
    """Capped stream of every penalty decision with its evidence."""
    return _key(POLICY, "audit")


def metrics_last_read() -> str:
    """String: when the metrics reader last read pod usage (seconds), to turn rates into sums."""
    return _key(POLICY, "metrics-last-read")


def network_rates() -> str:
    """Hash: tenant → its runs' recent network rate, bytes per run-second (ledger: net_bytes /
    run_seconds over the tenant's shortest window); written by policy-check's tick in cost
    mode dominant with capacity.network, read by flow-start at decision time."""
    return _key(POLICY, "netrate")


# --- step-execute: run records, step messages, rates, dead letters (step-execute only) -------
def run(run_id: str) -> str:
    """Hash: one run (flow, tenant, user, fencing, status, counters, graph snapshot)."""
    return _key(EXECUTION, "run", run_id)


def run_messages(run_id: str) -> str:
    """Set: ids of the run's pending step messages (due, published or waiting for a retry)."""
    return _key(EXECUTION, "run", run_id, "messages")


def run_step_counts(run_id: str) -> str:
    """Hash: step id → number of the run's pending messages for that step (joins read it)."""
    return _key(EXECUTION, "run", run_id, "steps")


def run_seen(run_id: str) -> str:
    """Set: `messageId:seq` of every step output already routed (dedupe by messageId)."""
    return _key(EXECUTION, "run", run_id, "seen")


def run_join(run_id: str, node_id: str) -> str:
    """List: inputs buffered for a join node until nothing upstream is pending."""
    return _key(EXECUTION, "run", run_id, "join", node_id)


def runs_running() -> str:
    """Sorted set: running run ids scored by start time."""
    return _key(EXECUTION, "runs", "running")


def runs_recent() -> str:
    """Sorted set: ended run ids scored by end time (trimmed to the retention)."""
    return _key(EXECUTION, "runs", "recent")


def flow_runs(flow_id: str) -> str:
    """Set: ids of the flow's running runs (flow.stopping ends them)."""
    return _key(EXECUTION, "flow-runs", flow_id)


def step_message_family() -> str:
    """The family of step message keys (a script appends a message id; see keys_common.lua)."""
    return _key(EXECUTION, "msg", "")


def step_message(message_id: str) -> str:
    """Hash: one pending step message (run, flow, step, tenant, user, data, attempt, outputs)."""
    return step_message_family() + message_id


def step_due() -> str:
    """Sorted set: message ids scored by when they may be published (now, backoff, rate delay)."""
    return _key(EXECUTION, "due")


def step_deadlines() -> str:
    """Sorted set: published message ids scored by their step timeout."""
    return _key(EXECUTION, "deadlines")


def step_queues() -> str:
    """Set: names of the step queues messages were published to (reclaimed on tick)."""
    return _key(EXECUTION, "queues")


def step_rate(level: str, subject_id: str) -> str:
    """Hash: a message-rate token bucket (tokens, at) of one tenant or flow."""
    return _key(EXECUTION, "rate", level, subject_id)


def step_usage(metric: str) -> str:
    """Hash: `[tenant,user,flow]` JSON → count of `messages` or `bytes` not yet reported."""
    return _key(EXECUTION, "usage", metric)


def dead_letters() -> str:
    """Capped stream: every dead-lettered step message with its run, step, reason and error."""
    return _key(EXECUTION, "dead-letters")


def tenant_queued_bytes() -> str:
    """Hash: tenant → bytes its flows' step queues hold in Redis, as the last whole pass of
    step-execute's tick measured them (MEMORY USAGE of each queue), plus the field
    `QUEUED_BYTES_MEASURED_AT` (when that pass ended); replaced whole at the end of each pass
    (shared/execution/queued_bytes.py), never incremented."""
    return _key(EXECUTION, "queued-bytes")


def tenant_queued_bytes_pass() -> str:
    """Hash: tenant → bytes measured so far by the pass under way (becomes
    `tenant_queued_bytes` when the pass ends)."""
    return _key(EXECUTION, "queued-bytes", "pass")


# a tenant id is never empty and holds no unit separator: this field names no tenant
QUEUED_BYTES_MEASURED_AT = TENANT_SEPARATOR + "measured-at"


def step_reclaim_turn() -> str:
    """String with a TTL: set by the tick that reclaims stale queue entries, so ticks take turns."""
    return _key(EXECUTION, "reclaim-turn")


# --- flow-start: schedules, leases, admission (all {adm}; written by flow-start only) --------
# Keys an admission script chooses at run time (a flow's schedule and lease, the fair-queuing
# queues of tenants, users and flows it dispatches) are one *family* each: the family key below
# plus an id. The script gets the family keys in KEYS and appends the id, so a built key has the
# declared key's hash tag (one slot) and its name is spelled here only.
def admission_keys() -> list[str]:
    """KEYS[3..] of every admission script, in the order flow_start_common.lua reads them."""
    return [
        schedule_due(),
        deployed_flows(),
        fencing_counter(),
        admitted_runs(),
        run_deadlines(),
        admission_counts(),
        start_buckets(),
        waiting_runs(),
        fair_tenants(),
        fair_clock(),
        schedule_family(),
        run_lease_family(),
        waiting_queue_family(),
        waiting_users_family(),
        fair_users_family(),
        fair_flows_family(),
        run_costs(),
        waiting_since(),
        charged_through(),
        schedules(),
        schedule_buffered(),
        flows_waiting_since(),
    ]


def _pair(first: str, second: str) -> str:
    """`len:first:second`: unambiguous whatever the ids contain (Lua builds it the same way)."""
    return f"{len(first.encode())}:{first}:{second}"


def schedule_due() -> str:
    """Sorted set: flow id → next due time (epoch seconds, spread offset included)."""
    return _key(ADMISSION, "due")


def schedules() -> str:
    """Hash: flow id → its schedule, packed (`cron.pack_schedule`): cron, zone, offset,
    overlap, catch-up, max run ('' = the tenant's default), the tenant's byte length, each
    followed by \x1f, then tenant and user back to back. One hash for every flow instead of
    one per flow: about 50 bytes less per scheduled flow."""
    return _key(ADMISSION, "schedules")


def schedule_buffered() -> str:
    """Hash: flow id → `due|limit` (or `due|limit|msg`, a hub scheduler's run), the due time
    an overlap `buffer_one` flow holds back."""
    return _key(ADMISSION, "buffered")


def schedule_family() -> str:
    """The previous release's schedules: one hash per flow (read for one release, CHANGELOG)."""
    return _key(ADMISSION, "sched", "")


def schedule(flow_id: str) -> str:
    """Previous release: hash c cron, z zone, o offset, t tenant, u user, p overlap, w catch-up,
    m max run, b buffered due time; read for one release, moved to `schedules()` (and
    `schedule_buffered()`) when the flow's schedule is next stored."""
    return schedule_family() + flow_id


def deployed_flows() -> str:
    """Set: ids of flows whose deployment is ready (flow.started, until failed/stopped)."""
    return _key(ADMISSION, "deployed")


def run_lease_family() -> str:
    return _key(ADMISSION, "lease", "")


def run_lease(flow_id: str) -> str:
    """String `token|expiresAt|runId`: the flow's cron run in progress (fencing token)."""
    return run_lease_family() + flow_id


def fencing_counter() -> str:
    """String: the fencing token counter, incremented on every acquire."""
    return _key(ADMISSION, "fence")


def admitted_runs() -> str:
    """Hash: run id → JSON of an admitted, not yet released run (holds a slot)."""
    return _key(ADMISSION, "runs")


def run_deadlines() -> str:
    """Sorted set: admitted run id → when its slot is reclaimed if no end event came."""
    return _key(ADMISSION, "deadlines")


def admission_counts() -> str:
    """Hash: `*` running runs, `t:<tenant>` running, `w:<tenant>` waiting, `f:<flow>` running."""
    return _key(ADMISSION, "count")


def start_buckets() -> str:
    """Hash: tenant → `tokens:at` of its start-rate token bucket."""
    return _key(ADMISSION, "bucket")


def waiting_runs() -> str:
    """Hash: run id → JSON of a run waiting for admission (with its msg)."""
    return _key(ADMISSION, "waiting")


def waiting_queue_family() -> str:
    return _key(ADMISSION, "wq", "")


def waiting_queue(flow_id: str, user: str) -> str:
    """List: ids of the runs of one flow started by one user, oldest first."""
    return waiting_queue_family() + _pair(flow_id, user)


def waiting_users_family() -> str:
    return _key(ADMISSION, "wqu", "")


def waiting_users(flow_id: str) -> str:
    """Set: users with a waiting queue for the flow (to park, wake or drop them)."""
    return waiting_users_family() + flow_id


def fair_tenants() -> str:
    """Sorted set: tenants with dispatchable runs → start tag (fair queuing)."""
    return _key(ADMISSION, "wt")


def fair_users_family() -> str:
    return _key(ADMISSION, "wu", "")


def fair_users(tenant: str) -> str:
    """Sorted set: the tenant's users with dispatchable runs → start tag."""
    return fair_users_family() + tenant


def fair_flows_family() -> str:
    return _key(ADMISSION, "wf", "")


def fair_flows(tenant: str, user: str) -> str:
    """Sorted set: the user's flows with dispatchable runs → start tag."""
    return fair_flows_family() + _pair(tenant, user)


def fair_clock() -> str:
    """Hash: virtual times of fair queuing (V per level), finish tags of idle children as
    `finish@left` (a plain number, the previous release's form, is read as left now)."""
    return _key(ADMISSION, "vt")


def run_costs() -> str:
    """Hash: flow id → its runs' recent mean cost (slot-seconds), the admission estimate."""
    return _key(ADMISSION, "cost")


def waiting_since() -> str:
    """Sorted set: backlogged tenant → since when it waits without a start (aging bound)."""
    return _key(ADMISSION, "age")


def charged_through() -> str:
    """Sorted set: admitted run id → the time its slot-seconds are charged up to (by usage;
    admission + its estimate at first, +inf once charged up to its limit)."""
    return _key(ADMISSION, "charged")


def flows_waiting_since() -> str:
    """Sorted set: backlogged flow of a tenant's user, `_pair(_pair(tenant, user), flow)` →
    since when it waits without a start (aging bound)."""
    return _key(ADMISSION, "agef")


# --- deploy: desired state, deploying deadlines, locks (one record per target) --------------
def deploy_target(kind: str, target_id: str) -> str:
    """Hash: one deployed flow or global component (status, manifests, hashes, deadline)."""
    return _key(DEPLOY, "target", kind, target_id)


def deploy_targets() -> str:
    """Set: `kind:id` of every target with a record (what the reconcile tick walks)."""
    return _key(DEPLOY, "targets")


def deploy_lock(kind: str, target_id: str) -> str:
    """redis-py Lock: one deploy, stop or reconcile of a target at a time."""
    return _key(DEPLOY, "lock", kind, target_id)


def deploy_tenant_replicas(tenant: str) -> str:
    """Hash: flow id → replicas it holds, counted against the tenant's max_replicas."""
    return _key(DEPLOY, "tenant-replicas", tenant)


# --- ship: the event log (what the functions announced; `orchestrator events tail`) ---------
def event_log() -> str:
    """Capped stream: every event the outbox sent (attributes, redacted data), oldest first."""
    return PREFIX + "events"
