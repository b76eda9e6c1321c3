"""What the demo does: four tenants, six flows, and who sends what when.

| tenant   | weight | flows                                  | its story                          |
|----------|--------|----------------------------------------|------------------------------------|
| acme     | 3      | acme-sync (every minute), acme-report  | different crons, and steady webhook |
|          |        | (every two minutes), acme-orders       | traffic: gets its slots however    |
|          |        | (webhook, every second, 2 s per run)   | hard initech floods                |
| globex   | 1      | globex-slow (every minute, runs 100 s) | slower than its schedule: the due  |
|          |        |                                        | times that find it running skip    |
| initech  | 1      | initech-hook (webhook, 1 per s, 4 s    | floods flow.execute: gets the      |
|          |        | per run, 3 workers)                    | slots acme leaves, the rest waits  |
|          |        |                                        | (then 429: the broker retries)     |
| umbrella | 1      | umbrella-chatty (webhook, 40 records)  | breaks chatty-flow: penalized up   |
|          |        |                                        | the ladder, restored when it calms |
| hooli    | 1      | hooli-batch (webhook, one per 3 s,     | long runs: charged by slot-seconds,|
|          |        | 15 s per run, 3 workers)               | it holds its weight share of them, |
|          |        |                                        | not 15/4 of initech's              |

Every flow runs the `demo-step` component (shared/local/demo/components.py): `seconds` of work, then
`count` records to the next node. Times are seconds since the demo started. The weights and
limits are in shared/data/demo-policy.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.events import types as t

DEMO_POLICY = Path(__file__).resolve().parents[2] / "data" / "demo-policy.yaml"
COMPONENT = "demo-step"
SOURCE = "/orchestrator-demo"  # plays the hub: /component-orchestrator/... sources are ours


@dataclass(frozen=True)
class DemoFlow:
    id: str
    tenant: str
    user: str
    cron: str | None
    seconds: float  # work of the first step per run
    count: int = 1  # records the first step passes on (one message each to the second step)
    second_step: bool = False
    replicas: int = 1  # workers of the first step: how many runs it works on at once

    def document(self) -> dict[str, Any]:
        nodes: list[dict[str, Any]] = [
            {
                "id": "work",
                "componentId": COMPONENT,
                "function": "process",
                "fields": {"seconds": self.seconds, "count": self.count},
                "nodeSettings": {"replicas": self.replicas},
            }
        ]
        edges: list[dict[str, Any]] = []
        if self.second_step:
            nodes.append(
                {
                    "id": "deliver",
                    "componentId": COMPONENT,
                    "function": "process",
                    "fields": {"seconds": 0, "count": 0},
                }
            )
            edges.append({"source": "work", "target": "deliver"})
        document: dict[str, Any] = {
            "id": self.id,
            "tenant": self.tenant,
            "owners": [{"id": self.user, "type": "user"}],
            "timezone": "UTC",
            "graph": {"nodes": nodes, "edges": edges},
            # on the minute, so that the story is easy to follow (the spread is for fleets)
            "flowSettings": {"spread": False, "overlapPolicy": "skip", "maxRunSeconds": 240},
        }
        if self.cron:
            document["cron"] = self.cron
        return document


TENANTS: dict[str, str] = {
    "acme": "weight 3, two cron flows",
    "globex": "a flow slower than its schedule",
    "initech": "floods flow.execute",
    "umbrella": "a chatty flow breaks a rule",
    "hooli": "long runs, held to its share of slot-seconds",
}
LONG_RUN_TENANT = "hooli"
SLOW_FLOW = "globex-slow"
FLOODING_TENANT = "initech"
BAD_TENANT = "umbrella"

FLOWS: tuple[DemoFlow, ...] = (
    DemoFlow("acme-sync", "acme", "alice", "* * * * *", seconds=3),
    DemoFlow("acme-report", "acme", "alice", "*/2 * * * *", seconds=8),
    DemoFlow("acme-orders", "acme", "alice", None, seconds=2, replicas=3),
    DemoFlow(SLOW_FLOW, "globex", "gina", "* * * * *", seconds=100),
    DemoFlow("initech-hook", FLOODING_TENANT, "ivan", None, seconds=4, replicas=3),
    DemoFlow("umbrella-chatty", BAD_TENANT, "uma", None, seconds=1, count=40, second_step=True),
    DemoFlow("hooli-batch", "hooli", "hana", None, seconds=15, replicas=3),
)
FLOWS_BY_ID = {flow.id: flow for flow in FLOWS}


@dataclass(frozen=True)
class Burst:
    """`per_second` flow.execute events for a flow (or one every `every` seconds)."""

    flow: str
    start: int
    stop: int | None  # exclusive; None: until the demo ends
    per_second: int = 1
    every: int = 1

    def events_at(self, second: int) -> int:
        if second < self.start or (self.stop is not None and second >= self.stop):
            return 0
        return self.per_second if (second - self.start) % self.every == 0 else 0


BURSTS: tuple[Burst, ...] = (
    Burst("acme-orders", start=3, stop=None),  # steady: about 2 slots, below its share
    Burst("initech-hook", start=5, stop=None, per_second=1),  # the flood never stops
    Burst("umbrella-chatty", start=5, stop=55, every=4),  # chatty for 50 s, then quiet
    Burst("hooli-batch", start=5, stop=None, every=3),  # always backlogged, 15 s runs
)

Send = Callable[..., None]  # send(event_type, data, *, tenant=..., user=...)


def seed(send: Send) -> None:
    """The Flow Repository starts every demo flow (deploy deploys it, flow-start schedules it)."""
    for flow in FLOWS:
        send(t.FLOW_STARTING, flow.document(), tenant=flow.tenant, user=flow.user)


def act(send: Send, second: int) -> int:
    """What the webhooks send in this second of the demo; returns how many events."""
    sent = 0
    for burst in BURSTS:
        flow = FLOWS_BY_ID[burst.flow]
        for n in range(burst.events_at(second)):
            send(
                t.FLOW_EXECUTE,
                {"flowId": flow.id, "msg": {"second": second, "n": n}},
                tenant=flow.tenant,
                user=flow.user,
            )
            sent += 1
    return sent
