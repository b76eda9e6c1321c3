"""`orchestrator flows | runs | tenants | events tail`, text and --json, on a seeded Redis.

The Redis is seeded by the real functions (shared.local.demo.system: the four FunctionRuntimes with
their real handlers, routed by the Triggers), on simulated time:
- acme (weight 3) has a cron flow `f-cron` (every minute, UTC, no spread) whose run takes 90 s;
- beta (weight 1, one run at a time) has `f-hook`, run three times by flow.execute;
- beta is then warned by policy-check's own escalation (shared.model.penalties.escalate).
At 00:01:01 the cron run holds the lease, the three hook runs are over. The system is driven
once per module; each test gets a copy of that Redis (DUMP/RESTORE), so tests stay fast and
independent.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from shared.adapters.component_repository import CatalogueComponentRepository
from shared.cli import main as cli
from shared.cli import ops as cli_ops
from shared.clock import FakeClock
from shared.events import make_event
from shared.events import types as t
from shared.local.demo.system import InProcessSystem
from shared.local.embedded_redis import EmbeddedRedis
from shared.model import penalties
from shared.model.policy import Policy, parse_policy
from shared.runtime import event_log
from shared.settings import Settings
from tests.conftest import TEST_KEY

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the FakeClock's start
CRON_DUE = START + 60  # 00:01:00
CRON_RUN = f"f-cron@{int(CRON_DUE)}"
POLICY_DOC = {
    "slots": 4,
    "tenants": {"acme": {"weight": 3}, "beta": {"max_concurrent_runs": 1, "max_waiting_runs": 5}},
}


def flow(
    flow_id: str, tenant: str, *, cron: str | None, seconds: float, owner: str = "u1"
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": flow_id,
        "tenant": tenant,
        "owners": [{"id": owner, "type": "user"}],
        "timezone": "UTC",
        "graph": {
            "nodes": [
                {
                    "id": "a",
                    "componentId": "example-source",
                    "function": "process",
                    "fields": {"count": 1, "seconds": seconds},
                },
                {"id": "b", "componentId": "example-sink", "function": "process"},
            ],
            "edges": [{"source": "a", "target": "b"}],
        },
        "flowSettings": {"spread": False},
    }
    if cron:
        document["cron"] = cron
    return document


@pytest.fixture()
def policy() -> Policy:
    return parse_policy(POLICY_DOC)


Snapshot = tuple[float, list[tuple[bytes, int, bytes]]]


@pytest.fixture(scope="module")
def snapshot(redis_server: EmbeddedRedis) -> Snapshot:
    """Drives the system once; returns (clock time, every key's DUMP and TTL)."""
    redis = Redis.from_url(redis_server.url)
    redis.flushall()
    clock = FakeClock(START)
    policy = parse_policy(POLICY_DOC)
    env = {"REDIS_URL": redis_server.url, "ORCHESTRATOR_KEY": TEST_KEY, "ORCHESTRATOR_AUTH": "off"}
    settings = Settings.from_env(
        {**env, "ORCHESTRATOR_DEPLOY_DRIVER": "local", "K_SINK": "http://bus.invalid"}
    )
    seed(redis, clock, policy, settings)
    dump = [(key, redis.pttl(key), redis.dump(key)) for key in redis.scan_iter(count=1000)]
    redis.close()
    return clock.now(), dump  # type: ignore[return-value]


@pytest.fixture()
def clock(snapshot: Snapshot) -> FakeClock:
    return FakeClock(snapshot[0])


@pytest.fixture()
def seeded(redis: Redis, snapshot: Snapshot) -> Redis:
    for key, ttl, value in snapshot[1]:
        redis.restore(key, max(ttl, 0), value)
    return redis


def seed(redis: Redis, clock: FakeClock, policy: Policy, settings: Settings) -> None:
    system = InProcessSystem(redis, clock, policy, settings, CatalogueComponentRepository())
    system.send(t.FLOW_STARTING, flow("f-cron", "acme", cron="* * * * *", seconds=90))
    system.send(t.FLOW_STARTING, flow("f-hook", "beta", cron=None, seconds=1, owner="u2"))
    system.settle()
    for n in range(3):
        system.send(t.FLOW_EXECUTE, {"flowId": "f-hook", "msg": {"n": n}}, tenant="beta")
    system.settle()
    system.run_for(int(CRON_DUE - START) + 1)
    penalties.escalate(
        redis,
        policy.penalties,
        level="tenant",
        subject_id="beta",
        tenant="beta",
        evidence=penalties.Evidence("chatty-flow", 7000, 6000, "1m", 60),
        now=clock.now(),
        source="/component-orchestrator/policy-check",
    )


def run_json(command: Any, *args: Any, **kwargs: Any) -> Any:
    out = io.StringIO()
    assert command(*args, as_json=True, out=out, **kwargs) == 0
    return json.loads(out.getvalue())


def run_text(command: Any, *args: Any, **kwargs: Any) -> str:
    out = io.StringIO()
    assert command(*args, as_json=False, out=out, **kwargs) == 0
    return out.getvalue()


# ------------------------------------------------------------------------------ flows
def test_flows_json_shows_schedule_next_run_lease_deployment_and_last_result(
    seeded: Redis, clock: FakeClock
) -> None:
    rows = {row["flow"]: row for row in run_json(cli_ops.show_flows, seeded, clock)["flows"]}
    assert set(rows) == {"f-cron", "f-hook"}
    cron, hook = rows["f-cron"], rows["f-hook"]
    assert (cron["cron"], cron["timezone"], cron["tenant"]) == ("* * * * *", "UTC", "acme")
    assert cron["next_run"] == CRON_DUE + 60
    assert cron["lease_run"] == CRON_RUN and cron["lease_token"] >= 1
    assert cron["lease_expires"] > clock.now()
    assert cron["running"] == 1 and cron["last_status"] is None
    assert cron["deployment"] == "started" and hook["deployment"] == "started"
    assert hook["cron"] is None and hook["next_run"] is None and hook["lease_run"] is None
    assert hook["last_status"] == "completed" and hook["running"] == 0


def test_flows_text_names_the_same_facts(seeded: Redis, clock: FakeClock) -> None:
    text = run_text(cli_ops.show_flows, seeded, clock)
    for expected in (
        "f-cron",
        "* * * * * UTC",
        "2026-01-01 00:02:00 (in 59s)",
        CRON_RUN,
        "f-hook",
        "(no cron)",
        "completed 2026-01-01",
    ):
        assert expected in text, expected


def test_flows_of_one_tenant(seeded: Redis, clock: FakeClock) -> None:
    rows = run_json(cli_ops.show_flows, seeded, clock, tenant="beta")["flows"]
    assert [row["flow"] for row in rows] == ["f-hook"]


# ------------------------------------------------------------------------------ runs
def test_runs_json_lists_running_and_recent(seeded: Redis, clock: FakeClock) -> None:
    document = run_json(cli_ops.show_runs, seeded, clock)
    assert [r["runId"] for r in document["running"]] == [CRON_RUN]
    assert document["running"][0]["trigger"] == "cron"
    recent = document["recent"]
    assert len(recent) == 3 and {r["flowId"] for r in recent} == {"f-hook"}
    assert {r["status"] for r in recent} == {"completed"} and {r["trigger"] for r in recent} == {
        "execute"
    }
    ends = [r["endedAt"] for r in recent]
    assert ends == sorted(ends, reverse=True), "recent: newest first"


@pytest.mark.parametrize(
    ("filters", "running", "recent"),
    [
        ({"tenant": "acme"}, 1, 0),
        ({"tenant": "beta"}, 0, 3),
        ({"flow": "f-hook"}, 0, 3),
        ({"limit": 2}, 1, 2),
        ({"tenant": "nobody"}, 0, 0),
    ],
    ids=["acme's", "beta's", "one flow's", "at most two", "an unknown tenant's"],
)
def test_runs_filters(
    seeded: Redis, clock: FakeClock, filters: dict[str, Any], running: int, recent: int
) -> None:
    document = run_json(cli_ops.show_runs, seeded, clock, **filters)
    assert (len(document["running"]), len(document["recent"])) == (running, recent)


def test_runs_text(seeded: Redis, clock: FakeClock) -> None:
    text = run_text(cli_ops.show_runs, seeded, clock)
    assert "running" in text and CRON_RUN in text and "1.0s" in text  # 1 s of 90 so far
    assert text.count("completed") == 3


# ------------------------------------------------------------------------------ tenants
def test_tenants_json_shows_usage_weight_limits_share_and_penalty(
    seeded: Redis, clock: FakeClock, policy: Policy
) -> None:
    document = run_json(cli_ops.show_tenants, seeded, policy, clock)
    assert document["slots"] == 4 and document["running"] == 1
    rows = {row["tenant"]: row for row in document["tenants"]}
    acme, beta = rows["acme"], rows["beta"]
    assert (acme["weight"], acme["running"], acme["slot_share"]) == (3, 1, 0.25)
    assert acme["weight_share"] == 1.0  # the only tenant with runs in flight
    assert acme["penalty"] is None and acme["max_concurrent_runs"] == 20
    assert beta["penalty"] == "warn" and beta["weight_share"] == 0.0
    assert (beta["max_concurrent_runs"], beta["max_waiting_runs"]) == (1, 5)
    assert beta["usage"]["runs"] == 3 and acme["usage"]["runs"] == 1
    assert beta["usage"]["messages"] >= 6  # two steps per run


def test_a_throttled_tenant_shows_its_lowered_start_rate(
    seeded: Redis, clock: FakeClock, policy: Policy
) -> None:
    clock.advance(policy.penalties.cooldown_seconds + 1)  # past the warn's cooldown
    penalties.escalate(
        seeded,
        policy.penalties,
        level="tenant",
        subject_id="beta",
        tenant="beta",
        evidence=penalties.Evidence("chatty-flow", 7000, 6000, "1m", 60),
        now=clock.now(),
        source="/component-orchestrator/policy-check",
    )
    rows = {
        r["tenant"]: r for r in run_json(cli_ops.show_tenants, seeded, policy, clock)["tenants"]
    }
    assert rows["beta"]["penalty"] == "throttle"
    limit = policy.tenant("beta").start_rate_per_minute
    assert rows["beta"]["start_rate_per_minute"] == limit * policy.penalties.throttle_factor


def test_tenants_text(seeded: Redis, clock: FakeClock, policy: Policy) -> None:
    text = run_text(cli_ops.show_tenants, seeded, policy, clock)
    assert "1 of 4 slots running" in text
    for expected in ("acme", "25%", "100%", "beta", "warn"):
        assert expected in text, expected


# ------------------------------------------------------------------------------ events
def test_events_tail_json_lines_in_order(seeded: Redis, clock: FakeClock) -> None:
    out = io.StringIO()
    cli_ops.show_events(seeded, clock, as_json=True, out=out, count=50)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert 0 < len(events) <= 50
    times = [e["time"] for e in events]
    assert times == sorted(times)
    assert all("authtoken" not in e["extensions"] for e in events)


@pytest.mark.parametrize(
    ("types", "tenant", "expected"),
    [
        (["flow.execution.admitted"], None, 4),
        (["flow.execution.admitted"], "beta", 3),
        (["flow.started"], None, 2),
        (["flow.execution"], "acme", 1),  # a family: admitted, the run is still going
        (["tenant.throttled"], None, 0),
    ],
    ids=["admissions", "beta's admissions", "deployments", "acme's run events", "none"],
)
def test_events_tail_filters(
    seeded: Redis, clock: FakeClock, types: list[str], tenant: str | None, expected: int
) -> None:
    out = io.StringIO()
    cli_ops.show_events(seeded, clock, as_json=True, out=out, count=100, types=types, tenant=tenant)
    assert len(out.getvalue().splitlines()) == expected


def test_events_tail_text_shows_type_tenant_flow_and_run(seeded: Redis, clock: FakeClock) -> None:
    text = run_text(
        cli_ops.show_events, seeded, clock, count=100, types=["flow.execution.admitted"]
    )
    assert f"flow.execution.admitted      tenant=acme flow=f-cron run={CRON_RUN}" in text
    assert "trigger=cron" in text


class _ClockThatLogs(FakeClock):
    """Each sleep (the follower waiting for news) lets one more event happen."""

    def __init__(self, redis: Redis, start: float) -> None:
        super().__init__(start)
        self.redis = redis
        self.sleeps = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        super().sleep(seconds)
        event = make_event(
            t.TENANT_RESTORED,
            {"subject": {"level": "tenant", "id": "beta"}, "penalty": "none"},
            event_id=f"late-{self.sleeps}",
            source="/tests",
            time=self.now(),
            tenant="beta",
        )
        event_log.record(self.redis, event)


def test_events_tail_follow_prints_new_events_as_they_come(seeded: Redis, clock: FakeClock) -> None:
    follower_clock = _ClockThatLogs(seeded, clock.now())
    out = io.StringIO()
    seen: list[str] = []

    def stop() -> bool:
        seen.append(out.getvalue())
        return len(seen) >= 2

    cli_ops.show_events(
        seeded, follower_clock, as_json=True, out=out, count=0, follow=True, stop=stop
    )
    ids = [json.loads(line)["id"] for line in out.getvalue().splitlines()]
    assert ids == ["late-1", "late-2"]


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture()
def cli_env(
    seeded: Redis, base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("REDIS_URL", base_env["REDIS_URL"])
    monkeypatch.delenv("ORCHESTRATOR_POLICY_FILE", raising=False)
    yield


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["flows", "--json"], "flows"),
        (["runs", "--json", "--limit", "5"], "recent"),
        (["tenants", "--json"], "tenants"),
    ],
    ids=["flows", "runs", "tenants"],
)
def test_the_orchestrator_command_answers_json(
    cli_env: None, capsys: pytest.CaptureFixture[str], argv: list[str], key: str
) -> None:
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)[key]


def test_the_orchestrator_command_tails_events(
    cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["events", "tail", "-n", "3", "--type", "flow.started"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("flow.started" in line for line in lines)


def test_without_redis_the_command_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(SystemExit, match="REDIS_URL"):
        cli.main(["tenants", "--state-dir", str(tmp_path)])
