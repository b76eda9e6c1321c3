"""`orchestrator penalties` and `orchestrator penalties lift` against a seeded Redis."""

from __future__ import annotations

import io
import json

import pytest
from redis import Redis

from shared import keys
from shared.cli import main as cli
from shared.cli.penalties import lift, parse_subject, show
from shared.clock import FakeClock
from shared.events import OutgoingEvent
from shared.local.embedded_redis import EmbeddedRedis
from shared.model import audit, penalties
from shared.model.policy import Policy

POLICY = Policy()
EVIDENCE = penalties.Evidence("chatty-flow", 6500, 6000, "1m", 60)


def seed(
    redis: Redis, clock: FakeClock, steps: int, *, level: str = "flow", subject: str = "f1"
) -> None:
    for _ in range(steps):
        penalties.escalate(
            redis,
            POLICY.penalties,
            level=level,
            subject_id=subject,
            tenant="noisy",
            evidence=EVIDENCE,
            now=clock.now(),
            source="/tests",
        )
        clock.advance(24 * 3600)


def test_json_lists_current_penalties_with_evidence_and_history(
    redis: Redis, clock: FakeClock
) -> None:
    seed(redis, clock, 2)
    out = io.StringIO()
    assert show(redis, as_json=True, history=5, out=out) == 0
    [row] = json.loads(out.getvalue())["penalties"]
    assert (row["subject"], row["penalty"], row["tenant"], row["rule"]) == (
        "flow:f1",
        "throttle",
        "noisy",
        "chatty-flow",
    )
    assert (row["measured"], row["limit"], row["window"], row["repeats"]) == (6500, 6000, "1m", 2)
    assert [e["penalty"] for e in row["audit"]] == ["warn", "throttle"]


def test_text_output_reads_like_a_table(redis: Redis, clock: FakeClock) -> None:
    seed(redis, clock, 1, level="tenant", subject="noisy")
    out = io.StringIO()
    show(redis, as_json=False, history=1, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:4] == ["SUBJECT", "PENALTY", "UNTIL", "(UTC)"]
    assert "tenant:noisy" in lines[1] and "warn" in lines[1] and "6500 > 6000 over 1m" in lines[1]
    assert "escalate" in lines[2]


def test_no_penalties(redis: Redis) -> None:
    out = io.StringIO()
    show(redis, as_json=False, history=3, out=out)
    assert out.getvalue() == "no penalties\n"


def test_lift_removes_the_penalty_audits_it_and_queues_the_restore(
    redis: Redis, clock: FakeClock
) -> None:
    seed(redis, clock, 4)
    out = io.StringIO()
    code = lift(redis, POLICY, clock, ("flow", "f1"), actor="operator:bob", as_json=True, out=out)
    assert code == 0
    assert json.loads(out.getvalue()) == {
        "subject": "flow:f1",
        "lifted": True,
        "previous": "suspend",
        "actor": "operator:bob",
    }
    assert not penalties.is_suspended(redis, tenant="noisy", flow="f1")
    entry = audit.read(redis, count=1)[0]
    assert (entry.get("action"), entry.get("actor")) == ("lift", "operator:bob")
    last = OutgoingEvent.from_json(redis.lrange(keys.outbox(keys.POLICY), -1, -1)[0])
    assert last.type.endswith("tenant.restored") and last.extensions["flowid"] == "f1"
    again = io.StringIO()
    assert lift(redis, POLICY, clock, ("flow", "f1"), actor="x", as_json=False, out=again) == 1
    assert "has no penalty" in again.getvalue()


@pytest.mark.parametrize("text", ["f1", "tenant:", "team:x", ":x"])
def test_a_subject_needs_a_level(text: str) -> None:
    with pytest.raises(Exception, match="LEVEL:ID"):
        parse_subject(text)


def test_the_commands_are_registered_in_the_orchestrator_cli(
    redis: Redis,
    clock: FakeClock,
    redis_server: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.delenv("ORCHESTRATOR_POLICY_FILE", raising=False)
    seed(redis, clock, 1, level="tenant", subject="noisy")
    assert cli.main(["penalties", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["penalties"][0]["subject"] == "tenant:noisy"
    assert cli.main(["penalties", "--json", "lift", "tenant:noisy", "--actor", "ops"]) == 0
    assert json.loads(capsys.readouterr().out)["lifted"] is True
    assert penalties.current(redis) == []
