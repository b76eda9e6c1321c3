"""CRON_OWNER=hub: the hub's scheduler service fires cron flows (its flow.execute,
tests/fixtures/oih/flow.execute.scheduler.json from services/scheduler/src/SchedulePublisher.js);
we schedule nothing ourselves, and its runs still get skip, overlap and fairness."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from redis import Redis

from shared import keys
from shared.admission.schedule import parse_instant
from shared.clock import FakeClock
from shared.handlers.flow_start import SPEC as FLOW_START
from shared.settings import Settings, SettingsError
from tests.fakes.iam import FakeIam
from tests.support.flows import policy
from tests.support.function import FunctionHarness
from tests.support.oih import fixture

FLOW = fixture("flow.starting")["data"]
SCHEDULED = fixture("flow.execute.scheduler")["data"]
DUE = int(parse_instant(SCHEDULED["flow"]["dueExecution"]) or 0)


def hub_harness(
    redis: Redis, clock: FakeClock, env: dict[str, str], slots: int = 4
) -> FunctionHarness[Any]:
    return FunctionHarness(
        FLOW_START, redis, clock, {**env, "CRON_OWNER": "hub"}, policy=policy(slots=slots)
    )


def scheduled(due_iso: str | None = None, flow_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(SCHEDULED)
    if due_iso is not None:
        data["flow"]["dueExecution"] = due_iso
    if flow_id is not None:
        data["flow"]["_id"] = flow_id
    return data


def test_the_setting_defaults_to_the_orchestrator_and_refuses_anything_else() -> None:
    base = {"REDIS_URL": "redis://x:1/0", "ORCHESTRATOR_KEY": "k" * 40, "ORCHESTRATOR_AUTH": "off"}
    assert Settings.from_env(base).cron_owner == "orchestrator"
    assert Settings.from_env({**base, "CRON_OWNER": "hub"}).cron_owner == "hub"
    with pytest.raises(SettingsError, match="CRON_OWNER"):
        Settings.from_env({**base, "CRON_OWNER": "both"})


def test_with_the_hub_owning_cron_we_schedule_nothing(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = hub_harness(redis, clock, base_env)
    # a flow scheduled while we owned cron: its schedule goes on the next flow.starting
    ours = FunctionHarness(FLOW_START, redis, clock, base_env, policy=policy(slots=4))
    ours.start_flow(copy.deepcopy(FLOW))
    assert redis.zscore(keys.schedule_due(), FLOW["id"]) is not None
    harness.start_flow(copy.deepcopy(FLOW))
    assert redis.zscore(keys.schedule_due(), FLOW["id"]) is None
    clock.advance(3600)
    harness.tick()
    assert harness.admitted() == []


def test_a_stale_schedule_is_not_fired_by_a_tick(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    ours = FunctionHarness(FLOW_START, redis, clock, base_env, policy=policy(slots=4))
    ours.start_flow(copy.deepcopy(FLOW))
    harness = hub_harness(redis, clock, base_env)
    clock.advance(3600)
    harness.tick()
    assert harness.admitted() == []


def test_the_schedulers_flow_execute_is_a_cron_run_of_its_due_time(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = hub_harness(redis, clock, base_env)
    harness.start_flow(copy.deepcopy(FLOW))
    harness.send("flow.execute", scheduled(), event_id="sched-1")
    [admitted] = harness.admitted()
    assert admitted["trigger"] == "cron" and admitted["runId"] == f"{FLOW['id']}@{DUE}"
    assert admitted["scheduledFor"] == DUE
    assert admitted["msg"]["metadata"]["source"]["type"] == "scheduler"  # its msg goes on
    # the scheduler publishing the same due time again (a second instance, a redelivery under
    # another id): skipped as an overlap, one run
    harness.send("flow.execute", scheduled(), event_id="sched-2")
    assert len(harness.admitted()) == 1
    assert harness.reasons("flow.execution.skipped") == ["overlap"]


def test_a_due_time_that_finds_the_flow_running_is_skipped_then_the_next_one_runs(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = hub_harness(redis, clock, base_env)
    harness.start_flow(copy.deepcopy(FLOW))
    harness.send("flow.execute", scheduled(), event_id="s-1")
    [first] = harness.admitted()
    harness.send("flow.execute", scheduled("2024-05-02T10:05:00.000Z"), event_id="s-2")
    assert harness.reasons("flow.execution.skipped") == ["overlap"]
    harness.end(first)
    harness.send("flow.execute", scheduled("2024-05-02T10:10:00.000Z"), event_id="s-3")
    assert [a["scheduledFor"] for a in harness.admitted()] == [DUE, DUE + 600]


def test_a_buffered_scheduler_run_keeps_its_msg(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    """overlap buffer_one: the due time that found the flow running waits, and starts with the
    scheduler's msg once the run ends (before, it started with an empty msg)."""
    harness = hub_harness(redis, clock, base_env)
    harness.start_flow({**copy.deepcopy(FLOW), "flowSettings": {"overlapPolicy": "buffer_one"}})
    harness.send("flow.execute", scheduled(), event_id="s-1")
    [first] = harness.admitted()
    later = scheduled("2024-05-02T10:05:00.000Z")
    later["msg"] = {**later.get("msg", {}), "data": {"note": "a|b|c"}}  # `|` is our separator
    harness.send("flow.execute", later, event_id="s-2")
    assert harness.reasons("flow.execution.deferred") == ["buffered"]
    harness.end(first)
    [_, buffered] = harness.admitted()
    assert buffered["scheduledFor"] == DUE + 300
    assert buffered["msg"]["data"] == {"note": "a|b|c"}
    assert buffered["msg"]["metadata"]["source"]["type"] == "scheduler"


def test_a_buffered_due_time_the_previous_release_kept_still_starts(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    """`due|limit` without a msg (every buffered due time before this release): started with
    the empty msg, as it was."""
    harness = hub_harness(redis, clock, base_env)
    harness.start_flow({**copy.deepcopy(FLOW), "flowSettings": {"overlapPolicy": "buffer_one"}})
    harness.send("flow.execute", scheduled(), event_id="s-1")
    [first] = harness.admitted()
    redis.hset(keys.schedule_buffered(), FLOW["id"], f"{DUE + 300}|3600")
    harness.end(first)
    [_, buffered] = harness.admitted()
    assert (buffered["scheduledFor"], buffered["msg"]) == (DUE + 300, {})


def test_scheduler_runs_wait_their_fair_turn_for_a_slot(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    harness = hub_harness(redis, clock, base_env, slots=1)
    other = {**copy.deepcopy(FLOW), "id": "other-flow", "tenant": "another-tenant"}
    harness.start_flow(copy.deepcopy(FLOW))
    harness.start_flow(other)
    harness.send("flow.execute", scheduled(), event_id="s-1")
    harness.send("flow.execute", scheduled(flow_id="other-flow"), event_id="s-2")
    [first] = harness.admitted()
    assert first["flowId"] == FLOW["id"]
    assert harness.reasons("flow.execution.deferred") == ["slots"]
    harness.end(first)
    assert [a["flowId"] for a in harness.admitted()] == [FLOW["id"], "other-flow"]


def test_other_flow_executes_are_never_skipped_and_the_orchestrator_owner_ignores_the_source(
    redis: Redis, clock: FakeClock, base_env: dict[str, str]
) -> None:
    hub = hub_harness(redis, clock, base_env)
    hub.start_flow(copy.deepcopy(FLOW))
    webhook = fixture("flow.execute.webhooks")["data"]
    hub.send("flow.execute", copy.deepcopy(webhook), event_id="w-1")
    hub.send("flow.execute", copy.deepcopy(webhook), event_id="w-2")
    assert [a["trigger"] for a in hub.admitted()] == ["execute", "execute"]
    ours = FunctionHarness(FLOW_START, redis, clock, base_env, policy=policy(slots=4))
    ours.send("flow.execute", scheduled(), event_id="s-1")
    ours.send("flow.execute", scheduled(), event_id="s-2")
    assert [a["trigger"] for a in ours.admitted()] == ["execute", "execute"]


def test_only_the_hubs_own_scheduler_execute_is_a_cron_run(
    redis: Redis, clock: FakeClock, base_env: dict[str, str], iam: FakeIam
) -> None:
    """Auth on: a tenant's user sending a scheduler-shaped flow.execute starts a run with data
    (never skipped); the hub's service account's is the due time's cron run."""
    env = {
        **base_env,
        **iam.env(),
        "ORCHESTRATOR_AUTH": "required",
        "HUB_SERVICE_ACCOUNTS": "hub-sa",
    }
    harness = hub_harness(redis, clock, env)
    harness.store_flow({**copy.deepcopy(FLOW), "tenant": "acme"})
    harness.send("flow.started", {"id": FLOW["id"]}, sender="deploy")
    user = iam.token(tenant="acme", sub="alice")
    hub = iam.token(tenant=None, sub="hub-sa", permissions=("all",))  # the hub: an admin
    harness.send("flow.execute", scheduled(), event_id="u-1", authtoken=user)
    harness.send("flow.execute", scheduled(), event_id="h-1", authtoken=hub)
    assert [a["trigger"] for a in harness.admitted()] == ["execute", "cron"]
