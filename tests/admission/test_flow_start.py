"""flow-start through FunctionRuntime (issue 4): schedules, deployment state, execute, release."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis import Redis

from shared import keys
from shared.admission import cron
from shared.admission import queue as admission
from shared.clock import FakeClock
from shared.errors import InvalidEvent, OverCapacity, TemporaryError, Unprocessable
from shared.events import OutgoingEvent, RunAdmitted, RunNotStarted
from shared.handlers.flow_start import SPEC as FLOW_START
from shared.handlers.flow_start import Services as FlowStartServices
from tests.fakes.iam import FakeIam
from tests.support.flows import flow_doc, policy
from tests.support.function import FunctionHarness

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

MINUTE = 60.0


@pytest.fixture()
def fs(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> FunctionHarness[FlowStartServices]:
    return FunctionHarness(FLOW_START, redis, clock, base_env)


def test_a_deployed_cron_flow_is_admitted_at_its_due_time(
    fs: FunctionHarness[FlowStartServices], clock: FakeClock
) -> None:
    fs.start_flow(flow_doc("f1", cron="*/5 * * * *", spread=False))
    fs.tick()
    assert fs.admitted() == []  # 00:00 was "now" when stored: the first due time is 00:05
    clock.advance(5 * MINUTE)
    fs.tick()
    [admitted] = fs.admitted()
    assert RunAdmitted.parse(admitted).trigger == "cron"
    assert admitted["scheduledFor"] == clock.now()
    assert admitted["runId"] == f"f1@{int(clock.now())}"
    assert admitted["tenant"] == "acme" and admitted["user"] == "u1"
    event = fs.sender.of_type("flow.execution.admitted")[0]
    assert event.extensions == {"tenant": "acme", "flowid": "f1", "runid": admitted["runId"]}


def test_cron_due_times_of_an_undeployed_flow_are_skipped(
    fs: FunctionHarness[FlowStartServices], clock: FakeClock
) -> None:
    fs.start_flow(flow_doc("f1", spread=False), deployed=False)
    clock.advance(MINUTE)
    fs.tick()
    assert fs.admitted() == []
    assert fs.reasons("flow.execution.skipped") == ["not_deployed"]
    RunNotStarted.parse(fs.emitted("flow.execution.skipped")[0])


def test_executions_wait_until_the_flow_is_deployed(fs: FunctionHarness[FlowStartServices]) -> None:
    fs.start_flow(flow_doc("f1", cron=None), deployed=False)
    fs.execute("f1", {"n": 1})
    assert fs.admitted() == []
    assert fs.reasons("flow.execution.deferred") == ["not_deployed"]
    fs.send("flow.started", {"id": "f1"})
    [admitted] = fs.admitted()
    assert admitted["trigger"] == "execute" and admitted["msg"] == {"n": 1}


def test_a_failed_deployment_parks_waiting_runs_again(
    fs: FunctionHarness[FlowStartServices],
) -> None:
    fs.start_flow(flow_doc("f1", cron=None))
    fs.send("flow.failed", {"id": "f1", "reason": "image pull"})
    fs.execute("f1")
    assert fs.admitted() == []
    fs.send("flow.started", {"id": "f1"})
    assert len(fs.admitted()) == 1


def test_execute_of_an_unknown_flow_is_422(fs: FunctionHarness[FlowStartServices]) -> None:
    with pytest.raises(Unprocessable):
        fs.execute("nope")


def test_msg_reaches_the_admitted_event_unchanged(fs: FunctionHarness[FlowStartServices]) -> None:
    fs.start_flow(flow_doc("f1", cron=None))
    msg = {"list": [], "big": 12345678901234567890, "nested": {"empty": {}}, "s": "ü/\n"}
    fs.execute("f1", msg)
    assert fs.admitted()[0]["msg"] == msg


BAD_SETTINGS: dict[str, dict[str, Any]] = {
    "flowSettings.overlapPolicy": {"overlapPolicy": "sometimes"},
    "flowSettings.maxRunSeconds": {"maxRunSeconds": -5},
    "flowSettings.catchupWindowSeconds": {"catchupWindowSeconds": "soon"},
    "flowSettings.spread": {"spread": "no"},
}


@pytest.mark.parametrize(
    ("cron", "timezone", "named"),
    [
        ("not a cron", None, "cron"),
        ("0 0 30 2 *", None, "cron"),
        ("* * * * *", "Mars/Olympus", "timezone"),
        ("* * * * *", None, "flowSettings.overlapPolicy"),
        ("* * * * *", None, "flowSettings.maxRunSeconds"),
        ("* * * * *", None, "flowSettings.catchupWindowSeconds"),
        ("* * * * *", None, "flowSettings.spread"),
    ],
    ids=[
        "garbage cron",
        "a cron that never fires",
        "unknown zone",
        "unknown overlap policy",
        "negative run limit",
        "catch-up window not a number",
        "spread not a boolean",
    ],
)
def test_invalid_schedules_are_refused_and_nothing_is_stored(
    fs: FunctionHarness[FlowStartServices],
    redis: Redis,
    cron: str,
    timezone: str | None,
    named: str,
) -> None:
    bad_settings = BAD_SETTINGS.get(named, {})
    with pytest.raises(InvalidEvent) as refused:
        fs.send("flow.starting", flow_doc("f1", cron=cron, timezone=timezone, **bad_settings))
    assert refused.value.status == 400
    assert any(problem.startswith(named) for problem in refused.value.problems)
    assert redis.keys("*") == []


def test_execute_over_the_waiting_cap_is_429_and_stores_nothing(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    fs = FunctionHarness(
        FLOW_START, redis, clock, base_env, policy=policy(defaults={"max_waiting_runs": 2})
    )
    fs.start_flow(flow_doc("f1", cron=None), deployed=False)
    fs.execute("f1")
    fs.execute("f1")
    waiting_before = redis.hlen(keys.waiting_runs())
    with pytest.raises(OverCapacity) as refused:
        fs.execute("f1", event_id="third")
    assert refused.value.status == 429 and refused.value.retry_after
    assert redis.hlen(keys.waiting_runs()) == waiting_before == 2
    fs.send("flow.started", {"id": "f1"})  # two admitted: the broker's retry now gets in
    fs.execute("f1", event_id="third")
    assert len(fs.admitted()) == 3


def test_a_redelivered_execute_is_one_run(fs: FunctionHarness[FlowStartServices]) -> None:
    fs.start_flow(flow_doc("f1", cron=None))
    fs.execute("f1", event_id="same")
    fs.execute("f1", event_id="same")
    assert len(fs.admitted()) == 1


def test_completion_frees_the_slot_for_the_next_waiting_run(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    fs = FunctionHarness(FLOW_START, redis, clock, base_env, policy=policy(slots=1))
    fs.start_flow(flow_doc("f1", cron=None))
    fs.execute("f1", {"n": 1})
    fs.execute("f1", {"n": 2})
    assert [a["msg"] for a in fs.admitted()] == [{"n": 1}]
    assert fs.reasons("flow.execution.deferred") == ["slots"]
    fs.end(fs.admitted()[0])
    assert [a["msg"] for a in fs.admitted()] == [{"n": 1}, {"n": 2}]
    assert admission.counts(redis).running == 1


def test_flow_stopping_drops_schedule_and_waiting_runs(
    fs: FunctionHarness[FlowStartServices], redis: Redis, clock: FakeClock
) -> None:
    fs.start_flow(flow_doc("f1"), deployed=False)
    fs.execute("f1")
    fs.send("flow.stopping", {"id": "f1"})
    assert fs.reasons("flow.execution.skipped") == ["flow_stopped"]
    assert redis.zcard(keys.schedule_due()) == 0
    assert admission.counts(redis).waiting_by_tenant == {}
    clock.advance(10 * MINUTE)
    fs.tick()
    assert fs.admitted() == []


def test_outbox_entries_are_events_of_the_catalogue(
    fs: FunctionHarness[FlowStartServices], redis: Redis
) -> None:
    fs.sender.down = True
    fs.start_flow(flow_doc("f1", cron=None))
    with pytest.raises(TemporaryError, match="sink down"):  # 503: the Broker redelivers
        fs.execute("f1")
    [raw] = redis.lrange(keys.outbox(keys.ADMISSION), 0, -1)
    entry = json.loads(OutgoingEvent.from_json(raw).to_json())
    assert entry["type"] == "org.openintegrationhub.flow.execution.admitted"
    assert entry["source"] == "/component-orchestrator/flow-start"
    RunAdmitted.parse(entry["data"])


def test_ids_that_need_escaping_survive_the_lua_built_events(
    fs: FunctionHarness[FlowStartServices],
) -> None:
    fs.start_flow(flow_doc("f1", cron=None, tenant='ac"me/ü\\', owner="user\n1"))
    fs.execute("f1")
    [admitted] = fs.admitted()
    assert (admitted["tenant"], admitted["user"]) == ('ac"me/ü\\', "user\n1")
    assert fs.sender.of_type("flow.execution.admitted")[0].extensions["tenant"] == 'ac"me/ü\\'


def test_an_outage_runs_the_latest_due_time_once_and_announces_the_rest_missed(
    fs: FunctionHarness[FlowStartServices], clock: FakeClock
) -> None:
    fs.start_flow(flow_doc("f1", spread=False, overlapPolicy="allow"))
    clock.advance(3600 + 30)  # an hour without ticks
    fs.tick()
    [admitted] = fs.admitted()
    assert admitted["scheduledFor"] == 1_767_225_600 + 3600  # the latest, not a burst
    [missed] = fs.emitted("flow.execution.missed")
    assert missed["scheduledFor"] == 1_767_225_600 + 60
    clock.advance(60)
    fs.tick()
    assert len(fs.admitted()) == 2


def test_a_resent_flow_keeps_its_due_time_and_a_new_cron_moves_it(
    fs: FunctionHarness[FlowStartServices], redis: Redis, clock: FakeClock
) -> None:
    fs.start_flow(flow_doc("f1", cron="0 * * * *", spread=False))
    first = redis.zscore(keys.schedule_due(), "f1")
    clock.advance(600)
    fs.send("flow.starting", flow_doc("f1", cron="0 * * * *", spread=False, maxRunSeconds=60))
    assert redis.zscore(keys.schedule_due(), "f1") == first
    fs.send("flow.starting", flow_doc("f1", cron="*/5 * * * *", spread=False))
    assert redis.zscore(keys.schedule_due(), "f1") == 1_767_225_600 + 900
    fs.send("flow.starting", flow_doc("f1", cron=None))
    assert redis.zscore(keys.schedule_due(), "f1") is None


def test_an_older_flow_starting_does_not_change_the_schedule(
    fs: FunctionHarness[FlowStartServices], redis: Redis
) -> None:
    fs.send(
        "flow.starting", {**flow_doc("f1", cron="0 * * * *"), "updatedAt": "2026-01-02T00:00:00Z"}
    )
    fs.send(
        "flow.starting", {**flow_doc("f1", cron="* * * * *"), "updatedAt": "2026-01-01T00:00:00Z"}
    )
    assert cron.stored_schedule(redis, "f1")["c"] == "0 * * * *"  # type: ignore[index]


def test_penalty_events_dispatch_with_the_penalties_read_at_decision_time(
    fs: FunctionHarness[FlowStartServices], redis: Redis
) -> None:
    from tests.support.admission import penalize

    fs.start_flow(flow_doc("f1", cron=None))
    penalize(redis, "tenant", "acme", "suspend")
    fs.send(
        "tenant.suspended", {"subject": {"level": "tenant", "id": "acme"}, "penalty": "suspend"}
    )
    fs.execute("f1")
    assert fs.reasons("flow.execution.deferred") == ["suspended"]
    penalize(redis, "tenant", "acme", None)
    fs.send("tenant.restored", {"subject": {"level": "tenant", "id": "acme"}, "penalty": "none"})
    assert len(fs.admitted()) == 1


@pytest.mark.parametrize(
    "tenant",
    ["odd\x1ftenant", "ünïcödé-tenant", "a:b|c\x1f\x1f", "7"],
    ids=["unit separator", "non-ASCII (byte lengths)", "separators only", "digits"],
)
def test_a_tenant_id_holding_the_unit_separator_still_fires(
    fs: FunctionHarness[FlowStartServices], clock: FakeClock, tenant: str
) -> None:
    # the tick packs each entry into one argument, cut by byte lengths: any id survives
    fs.start_flow(flow_doc("f1", tenant=tenant, spread=False))
    clock.advance(MINUTE)
    fs.tick()
    assert [(a["tenant"], a["flowId"]) for a in fs.admitted()] == [(tenant, "f1")]


def test_a_schedule_without_a_timezone_runs_in_utc(
    fs: FunctionHarness[FlowStartServices], redis: Redis
) -> None:
    fs.start_flow(flow_doc("f1", cron="0 9 * * *", spread=False))
    fs.start_flow(flow_doc("f2", cron="0 9 * * *", spread=False, timezone="Europe/Berlin"))
    assert cron.stored_schedule(redis, "f1")["z"] == "UTC"  # type: ignore[index]
    assert redis.zscore(keys.schedule_due(), "f1") == 1_767_225_600 + 9 * 3600
    assert redis.zscore(keys.schedule_due(), "f2") == 1_767_225_600 + 8 * 3600


def test_execute_is_never_skipped_while_a_cron_run_holds_the_lease(
    fs: FunctionHarness[FlowStartServices], clock: FakeClock
) -> None:
    fs.start_flow(flow_doc("f1", spread=False))  # overlap policy skip (the default)
    clock.advance(MINUTE)
    fs.tick()
    [cron_run] = fs.admitted()
    fs.execute("f1", {"n": 1})
    fs.execute("f1", {"n": 2})
    clock.advance(MINUTE)
    fs.tick()  # the cron due time is skipped, the executions were not
    assert [a["trigger"] for a in fs.admitted()] == ["cron", "execute", "execute"]
    assert [a["msg"] for a in fs.admitted()[1:]] == [{"n": 1}, {"n": 2}]
    assert fs.reasons("flow.execution.skipped") == ["overlap"]
    assert all(a["fencingToken"] > cron_run["fencingToken"] for a in fs.admitted()[1:])
    fs.end(fs.admitted()[1])  # an execute run ending leaves the cron run's lease alone
    clock.advance(MINUTE)
    fs.tick()
    assert fs.reasons("flow.execution.skipped") == ["overlap", "overlap"]


def test_a_tick_reclaims_runs_past_their_deadline_and_dispatches_waiting_ones(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    fs = FunctionHarness(FLOW_START, redis, clock, base_env, policy=policy(slots=1))
    fs.start_flow(flow_doc("f1", cron=None, maxRunSeconds=60))
    fs.execute("f1", {"n": 1})
    fs.execute("f1", {"n": 2})
    fs.tick()
    assert [a["msg"] for a in fs.admitted()] == [{"n": 1}]  # the slot is still held
    clock.advance(60 + 60 + 1)  # the run limit and the watchdog's grace: no end event came
    fs.tick()
    assert [a["msg"] for a in fs.admitted()] == [{"n": 1}, {"n": 2}]
    assert admission.counts(redis).running == 1
    assert admission.counts(redis).waiting_by_tenant == {}


def test_the_user_of_an_execute_is_the_tokens_subject(
    redis: Redis, clock: FakeClock, base_env: dict[str, str], iam: FakeIam
) -> None:
    env = {
        **base_env,
        "ORCHESTRATOR_AUTH": "required",
        "IAM_JWKS_URL": iam.jwks_url,
        "IAM_ISSUER": iam.issuer,
        "IAM_AUDIENCE": iam.audience,
    }
    fs = FunctionHarness(FLOW_START, redis, clock, env)
    fs.send("flow.starting", flow_doc("f1", cron=None, owner="owner-1"), authtoken=iam.token())
    fs.send("flow.started", {"id": "f1"})
    fs.execute("f1", authtoken=iam.token(sub="bob"))
    [admitted] = fs.admitted()
    assert (admitted["user"], admitted["tenant"]) == ("bob", "acme")


def test_a_cron_faster_than_the_minimum_interval_is_refused_and_nothing_stored(
    fs: FunctionHarness[FlowStartServices], redis: Redis
) -> None:
    with pytest.raises(InvalidEvent, match="cron"):
        fs.send("flow.starting", flow_doc("f1", cron="*/10 * * * * *", spread=False))
    assert redis.zscore(keys.schedule_due(), "f1") is None


def test_a_six_field_schedule_stored_seconds_last_is_replanned_seconds_first(
    fs: FunctionHarness[FlowStartServices], clock: FakeClock, redis: Redis
) -> None:
    """A schedule stored before 6-field crons were read seconds first: its due time was
    planned with croniter's old reading (minute 30 of hours 0, 5, ... every second)."""
    from datetime import UTC, datetime

    from croniter import croniter

    cron = "30 */5 * * * *"
    fs.start_flow(flow_doc("f1", cron=cron, spread=False))
    start = datetime.fromtimestamp(clock.now(), UTC)
    old_due = croniter(cron, start).get_next(float)  # seconds last, as stored before
    assert old_due == clock.now() + 30 * MINUTE
    redis.zadd(keys.schedule_due(), {"f1": old_due})

    clock.advance(30 * MINUTE)
    fs.tick()
    assert fs.admitted() == []  # not a time of the cron as OIH reads it: nothing fires
    replanned = redis.zscore(keys.schedule_due(), "f1")
    assert replanned == clock.now() + 30  # the next time seconds first: hh:30:30

    clock.advance(30)
    fs.tick()
    [admitted] = fs.admitted()
    assert admitted["scheduledFor"] == replanned
