"""The demo, headless: the scenario through the four real functions on simulated time.

The summary must show what the demo is there to show: the slow flow's overlapping due times
skipped, the chatty tenant penalized (and nobody else), the flooding tenant waiting while the
others do not, never more runs than slots; and the files it promises. Plus the live mode's
sender: real events with real IAM tokens, as the broker receives them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rich.console import Console

from shared.adapters.iam import IamVerifier
from shared.cli import main as cli
from shared.clock import FakeClock
from shared.events import types as t
from shared.local.demo import runner as demo
from shared.local.demo import scenario
from shared.local.demo.board import Board, Sample, fair_shares, summary_text
from shared.local.embedded_redis import EmbeddedRedis
from shared.local.session import RunSession
from shared.model.policy import load_policy
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.support.http_sink import HttpSink

SECONDS = 80  # the first due time comes 10 s in; the slow flow's second one 70 s in
LADDER_ABOVE_WARN = {"throttle", "deprioritize", "suspend"}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def summary(redis_server: EmbeddedRedis, out_dir: Path) -> dict[str, Any]:
    redis = Redis.from_url(redis_server.url)
    redis.flushall()
    redis.script_flush()
    settings = Settings.from_env(
        {
            "REDIS_URL": redis_server.url,
            "ORCHESTRATOR_KEY": TEST_KEY,
            "ORCHESTRATOR_AUTH": "off",
            "ORCHESTRATOR_DEPLOY_DRIVER": "local",
            "ORCHESTRATOR_POLICY_FILE": str(demo.DEMO_POLICY),
            "K_SINK": "http://in-process.invalid/",
        }
    )
    result = demo.headless(
        SECONDS,
        redis=redis,
        clock=FakeClock(demo.HEADLESS_START),
        policy=load_policy(str(demo.DEMO_POLICY)),
        settings=settings,
        out_dir=out_dir,
    )
    redis.close()
    return result


def test_the_slow_flow_skips_the_due_times_that_find_it_running(summary: dict[str, Any]) -> None:
    slow = summary["flows"][scenario.SLOW_FLOW]
    assert slow["admitted"] >= 1
    assert slow["skipped"] >= 1 and slow["skipReasons"] == {"overlap": slow["skipped"]}
    assert summary["slowFlow"] == {"id": scenario.SLOW_FLOW, "skipped": slow["skipped"]}


def test_the_bad_tenant_is_penalized_up_the_ladder(summary: dict[str, Any]) -> None:
    bad = summary["badTenant"]
    assert bad["id"] == scenario.BAD_TENANT
    assert bad["worstPenalty"] in LADDER_ABOVE_WARN
    assert bad["violations"] >= 1
    changes = [e for e in summary["penalties"] if e["tenant"] == scenario.BAD_TENANT]
    assert changes and {e["rule"] for e in changes} == {"chatty-flow"}
    assert [e["at"] for e in changes] == sorted(e["at"] for e in changes)


def test_nobody_else_is_punished(summary: dict[str, Any]) -> None:
    others = {name: row for name, row in summary["tenants"].items() if name != scenario.BAD_TENANT}
    assert {name: row["worstPenalty"] for name, row in others.items()} == dict.fromkeys(others)
    assert {e["tenant"] for e in summary["penalties"]} <= {scenario.BAD_TENANT}


def test_the_flood_waits_its_turn_and_starves_nobody(summary: dict[str, Any]) -> None:
    tenants = summary["tenants"]
    flooder = tenants[scenario.FLOODING_TENANT]
    acme = tenants["acme"]
    assert flooder["deferred"] > 0 and flooder["meanWaitSeconds"] > 5 * max(
        acme["meanWaitSeconds"], 0.2
    )
    # acme's steady webhook traffic is admitted as it comes (one request a second from 3 s on)
    assert summary["flows"]["acme-orders"]["admitted"] >= SECONDS - 3 - 5
    assert acme["maxWaitSeconds"] < 10
    assert all(row["admitted"] > 0 for row in tenants.values())


def test_the_long_running_tenant_holds_no_more_slot_seconds_than_the_flood(
    summary: dict[str, Any],
) -> None:
    """hooli's runs are 15 s, initech's 4 s, same weight, both always waiting: charged by
    slot-seconds they hold similar shares (charged per run, hooli would hold about 15/4 of
    initech's)."""
    tenants = summary["tenants"]
    long_runs = tenants[scenario.LONG_RUN_TENANT]["slotSecondsShare"]
    flood = tenants[scenario.FLOODING_TENANT]["slotSecondsShare"]
    assert 0 < long_runs <= 1.6 * flood, (long_runs, flood)
    assert abs(sum(row["slotSecondsShare"] for row in tenants.values()) - 1) < 0.01


def test_never_more_runs_than_slots(summary: dict[str, Any]) -> None:
    assert 0 < summary["peakRunningAll"] <= summary["slots"]


def test_the_summary_files(summary: dict[str, Any], out_dir: Path) -> None:
    files = {kind: Path(path) for kind, path in summary["files"].items()}
    assert set(files) == {"json", "text", "png"} and all(
        p.parent == out_dir for p in files.values()
    )
    written = json.loads(files["json"].read_text())
    assert written["slowFlow"] == summary["slowFlow"] and written["seconds"] == SECONDS
    text = files["text"].read_text()
    assert f"slow flow {scenario.SLOW_FLOW}: {summary['slowFlow']['skipped']} due time" in text
    assert f"bad tenant {scenario.BAD_TENANT}: worst penalty" in text
    png = files["png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_the_command_runs_the_demo_headless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["demo", "--headless", "--seconds", "3", "--json", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mode"] == "headless" and printed["seconds"] == 3
    assert set(printed["tenants"]) == set(scenario.TENANTS)
    assert (tmp_path / "share.png").exists()


def test_the_live_demo_without_a_running_system_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--headless"):
        cli.main(["demo", "--state-dir", str(tmp_path)])


# ------------------------------------------------------------------------------ live sender
@pytest.fixture()
def iam() -> Iterator[Any]:
    from shared.local.embedded_iam import EmbeddedIam

    server = EmbeddedIam().start()
    yield server
    server.stop()


def test_the_live_demo_sends_control_events_with_real_iam_tokens(iam: Any) -> None:
    with HttpSink() as broker:
        session = RunSession(
            state_dir="/nonexistent",
            broker_url=broker.url,
            redis_url="redis://127.0.0.1:1/0",
            functions={},
            env={"ORCHESTRATOR_KEY": TEST_KEY, **iam.env()},
            iam_url=iam.url,
        )
        sender = demo.BrokerSender(session)
        scenario.seed(sender.send)
        assert scenario.act(sender.send, 5) > 0
        requests_seen = broker.wait_for(len(scenario.FLOWS) + 1)
    assert sender.failures == 0
    settings = Settings.from_env(
        {"REDIS_URL": "redis://x:1/0", "ORCHESTRATOR_KEY": TEST_KEY, **iam.env()}
    )
    verifier = IamVerifier.from_settings(settings, FakeClock(iam.clock.now()))
    flows = scenario.FLOWS_BY_ID
    for request in requests_seen:
        headers = request.headers
        assert headers["ce-type"] in (t.FLOW_STARTING, t.FLOW_EXECUTE)
        body = request.json()
        flow = flows[body["id"] if headers["ce-type"] == t.FLOW_STARTING else body["flowId"]]
        identity = verifier.verify(headers["ce-authtoken"])
        assert (identity.tenant, identity.subject) == (flow.tenant, flow.user)
        assert "flows.control" in identity.permissions


def test_the_live_table_shows_per_tenant_counts_shares_and_penalty(redis: Redis) -> None:
    policy = load_policy(str(demo.DEMO_POLICY))
    board = Board(redis=redis, policy=policy, started_at=0.0)
    bad, flooder = scenario.BAD_TENANT, scenario.FLOODING_TENANT
    board.counts[flooder].update(admitted=4, deferred=9)
    board.counts["acme"].update(admitted=7, skipped=2)
    board.samples.append(
        Sample(
            at=12.0,
            running={flooder: 1, "acme": 3},
            slot_share={flooder: 0.25, "acme": 0.75},
            weight_share={flooder: 0.2, "acme": 0.6},
            penalty={bad: "throttle"},
            waiting={flooder: 12},
            fair_share={flooder: 0.25, "acme": 0.75},
        )
    )
    board.slot_seconds.update({flooder: 10.0, "acme": 30.0})  # slot-seconds held so far
    console = Console(record=True, width=270, color_system=None)
    console.print(board.table(12.0))
    text = console.export_text()
    for column in ("admitted", "skipped", "deferred", "slot share", "weight share", "penalty"):
        assert column in text
    columns = ["tenant", "weight", "demand", "admitted", "mean wait", "skipped", "deferred",
               "slot share", "slot-s share", "fair share", "weight share", "penalty",
               "story"]  # fmt: skip
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == len(columns) and cells[0]:
            rows[cells[0]] = dict(zip(columns, cells, strict=True))
    assert set(board.tenants) <= set(rows)
    wanted = {
        flooder: {"admitted": "4", "skipped": "0", "deferred": "9", "demand": "1 + 12 waiting",
                  "slot share": "25%", "slot-s share": "25%", "fair share": "25%",
                  "weight share": "20%", "penalty": "-"},
        "acme": {"admitted": "7", "skipped": "2", "deferred": "0", "demand": "3 + 0 waiting",
                 "slot share": "75%", "slot-s share": "75%", "fair share": "75%",
                 "weight share": "60%", "penalty": "-"},
        bad: {"penalty": "throttle"},
    }  # fmt: skip
    for tenant, expected in wanted.items():
        assert {name: rows[tenant][name] for name in expected} == expected, tenant
    assert rows["acme"]["weight"] == f"{policy.tenant('acme').weight:g}"
    assert "fair share: the slots are shared by weight among the tenants that want them" in text


@pytest.mark.parametrize(
    ("demand", "weights", "slots", "fair"),
    [
        pytest.param({"a": 2, "b": 50}, {"a": 3, "b": 1}, 6, {"a": 2 / 6, "b": 4 / 6},
                     id="a heavy tenant that wants little keeps it, the flood gets the rest"),
        pytest.param({"a": 50, "b": 50}, {"a": 3, "b": 1}, 8, {"a": 6 / 8, "b": 2 / 8},
                     id="both want more: by weight"),
        pytest.param({"a": 1, "b": 1}, {"a": 1, "b": 1}, 6, {"a": 1 / 6, "b": 1 / 6},
                     id="nobody wants the rest: it stays free"),
        pytest.param({"a": 0, "b": 9}, {"a": 5, "b": 1}, 4, {"a": 0.0, "b": 1.0},
                     id="an idle tenant's weight counts for nothing"),
        pytest.param({"a": 9, "b": 9, "c": 1}, {"a": 1, "b": 1, "c": 1}, 7,
                     {"a": 3 / 7, "b": 3 / 7, "c": 1 / 7}, id="what one leaves is shared again"),
        pytest.param({"a": 9, "b": 9}, {"a": 0, "b": 1}, 4, {"a": 0.0, "b": 1.0},
                     id="a suspended tenant (weight 0) gets nothing"),
    ],
)  # fmt: skip
def test_fair_shares_are_weighted_max_min(
    demand: dict[str, int], weights: dict[str, float], slots: int, fair: dict[str, float]
) -> None:
    got = fair_shares(demand, weights, slots)
    assert got == pytest.approx(fair)
    assert sum(got.values()) <= 1 + 1e-9


def test_the_summary_states_the_rule_with_the_waits_that_prove_it(summary: dict[str, Any]) -> None:
    text = summary_text(summary)
    assert "fair share: the slots are shared by weight among the tenants that want them" in text
    for tenant, row in summary["tenants"].items():
        assert f"waited {row['meanWaitSeconds']:.1f} s on average" in text, tenant
        assert 0 <= row["meanFairShare"] <= 1
    flood = summary["tenants"][scenario.FLOODING_TENANT]
    assert flood["meanDemand"] > summary["slots"] / 2  # the flood wants more than it may have
    assert flood["meanSlotShare"] <= flood["meanFairShare"] + 0.15
