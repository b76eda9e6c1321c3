"""`/metrics` of the functions after real traffic through their functions-framework apps.

The four apps (functions/<fn>/main.py) run with their real handlers on one Redis; deploy
talks to the fake Kubernetes API over HTTP (through a kubeconfig) and the fake Component
Repository. An HTTP sink stands in for the broker: what one function emits is posted, as it
arrived, to the function that consumes it. Time is a FakeClock (the runtime's clock seam), so
a cron due time can pass. The series are read with Prometheus' own parser and compared with
their values before the traffic (the registry is per process).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from shared import keys
from shared.adapters.redis_streams import RedisStreamsQueue
from shared.clock import FakeClock
from shared.events import types as t
from shared.runtime import function as runtime_module
from shared.security.tokens import sign_internal
from tests.conftest import TEST_KEY
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.apps import app_client
from tests.support.http_sink import HttpSink, Request

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
slots: 10
tenants:
  beta: {max_concurrent_runs: 1}
rules:
  - {name: chatty-flow, metric: messages, subject: flow, window: 1m, max: 1}
penalties: {ladder: [throttle, suspend], cooldown: 1m}
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def flow_doc(flow_id: str, tenant: str, cron: str | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": flow_id,
        "tenant": tenant,
        "owners": [{"id": "u1", "type": "user"}],
        "graph": {
            "nodes": [
                {"id": "a", "componentId": "comp", "function": "run"},
                {"id": "b", "componentId": "comp", "function": "run"},
            ],
            "edges": [{"source": "a", "target": "b"}],
        },
        "flowSettings": {"spread": False},
    }
    if cron:
        document["cron"] = cron
    return document


class Apps:
    """The four function apps plus the sink that plays the broker."""

    def __init__(self, clock: FakeClock, sink: HttpSink) -> None:
        self.clock, self.sink = clock, sink
        self.clients = {
            function: app_client(ROOT / "functions" / function.replace("-", "_") / "main.py")
            for function in t.FUNCTIONS
        }
        self.forwarded = 0

    def post(self, function: str, event_type: str, data: Any, **extensions: str) -> int:
        attributes = {"type": event_type, "source": "/tests", **extensions}
        not_ours = t.CONTROL_TYPES | t.STEP_RESULT_TYPES | {t.TICK}
        if event_type not in not_ours:  # events between our functions carry our signature
            attributes["authtoken"] = sign_internal(
                TEST_KEY, "tests", self.clock, event_type=event_type
            )
        headers, body = to_binary(CloudEvent(attributes, data))
        response = self.clients[function].post("/", headers=headers, data=body)
        return int(response.status_code)

    def forward(self) -> None:
        """Posts every newly emitted event to each function whose Triggers want its type."""
        while self.forwarded < len(self.sink.requests):
            request = self.sink.requests[self.forwarded]
            self.forwarded += 1
            for function, consumed in t.CONSUMES.items():
                if request.headers["ce-type"] in consumed:
                    self._post_as_is(function, request)

    def _post_as_is(self, function: str, request: Request) -> None:
        headers = {k: v for k, v in request.headers.items() if k.startswith("ce-")}
        headers["content-type"] = request.headers.get("content-type", "application/json")
        status = self.clients[function].post("/", headers=headers, data=request.body).status_code
        assert status == 200, (function, request.headers["ce-type"], status)

    def metrics(self, function: str) -> Samples:
        response = self.clients[function].get("/metrics")
        assert response.status_code == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples
        }


@pytest.fixture()
def apps(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    base_env: dict[str, str],
    redis: Redis,
    clock: FakeClock,
    kube_api: FakeKubeApi,
    component_repo: FakeComponentRepo,
) -> Iterator[Apps]:
    component_repo.add("comp", replicas=1)
    kube_api.auto_ready = True
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with HttpSink() as sink:
        env = {
            **base_env,
            "K_SINK": sink.url,
            "ORCHESTRATOR_POLICY_FILE": str(policy),
            "ORCHESTRATOR_DEPLOY_DRIVER": "kubernetes",
            "KUBECONFIG": str(kubeconfig),
            "COMPONENT_REPOSITORY_URL": component_repo.url,
            "FLOW_START_WORK_THROUGH_SECONDS": "0",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        for name in ("KUBERNETES_SERVICE_HOST", "IAM_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(runtime_module, "SystemClock", lambda: clock)
        yield Apps(clock, sink)


def complete_step(apps: Apps, redis: Redis, flow_id: str, node: str) -> None:
    """What a component worker does: take the step's message, answer step.completed."""
    queue = RedisStreamsQueue(redis)
    (delivery,) = queue.receive(keys.step_queue(flow_id, node), "test-worker", wait_seconds=0)
    message = delivery.message
    assert message is not None
    data = {
        "runId": message.run_id,
        "stepId": message.step_id,
        "messageId": message.message_id,
        "data": {"done": node},
        "attempt": message.attempt,
    }
    assert apps.post(t.STEP_EXECUTE, t.STEP_COMPLETED, data, steptoken=message.token) == 200
    queue.ack(keys.step_queue(flow_id, node), [delivery])


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in after, f"{name}{labels} not exposed"
    return after[key] - before.get(key, 0.0)


def test_metrics_after_traffic_through_every_function(
    apps: Apps, redis: Redis, clock: FakeClock
) -> None:
    before = {function: apps.metrics(function) for function in t.FUNCTIONS}

    # deploy: the flow is applied to the (fake) cluster and reported started
    assert apps.post(t.DEPLOY, t.FLOW_STARTING, flow_doc("f1", "beta")) == 200
    # flow-start: two deployed flows, one cron flow that never gets deployed
    assert apps.post(t.FLOW_START, t.FLOW_STARTING, flow_doc("f1", "beta")) == 200
    assert apps.post(t.FLOW_START, t.FLOW_STARTING, flow_doc("f9", "gamma", "* * * * *")) == 200
    apps.forward()  # flow.started reaches flow-start (and policy-check)
    # beta may run one at a time: the first is admitted, the second waits (deferred)
    assert apps.post(t.FLOW_START, t.FLOW_EXECUTE, {"flowId": "f1"}, tenant="beta") == 200
    assert apps.post(t.FLOW_START, t.FLOW_EXECUTE, {"flowId": "f1"}, tenant="beta") == 200
    clock.advance(61)  # f9's due time passes while it is not deployed: skipped
    assert apps.post(t.FLOW_START, t.TICK, {}) == 200
    apps.forward()  # admitted → step-execute starts the run
    complete_step(apps, redis, "f1", "a")
    complete_step(apps, redis, "f1", "b")
    apps.forward()  # completed → flow-start releases (and admits the waiting run)
    for function in (t.STEP_EXECUTE, t.POLICY_CHECK):  # usage is reported, then policed
        assert apps.post(function, t.TICK, {}) == 200
        apps.forward()

    after = {function: apps.metrics(function) for function in t.FUNCTIONS}
    fs, de, se, pc = (after[f] for f in (t.FLOW_START, t.DEPLOY, t.STEP_EXECUTE, t.POLICY_CHECK))
    bfs, bde, bse, bpc = (
        before[f] for f in (t.FLOW_START, t.DEPLOY, t.STEP_EXECUTE, t.POLICY_CHECK)
    )

    handled = "orchestrator_events_handled_total"
    assert delta(fs, bfs, handled, function="flow-start", type="flow.execute", outcome="ok") == 2
    assert delta(fs, bfs, "orchestrator_admissions_total", tenant="beta", trigger="execute") == 2
    assert delta(fs, bfs, "orchestrator_deferrals_total", tenant="beta") >= 1
    assert delta(fs, bfs, "orchestrator_skips_total", tenant="gamma", reason="not_deployed") == 1
    assert delta(fs, bfs, "orchestrator_schedule_lag_seconds_count") == 2
    assert delta(de, bde, "orchestrator_deployments_total", outcome="flow.started") == 1
    assert (
        delta(de, bde, "orchestrator_handle_seconds_count", function="deploy", type="flow.starting")
        == 1
    )
    assert (
        delta(
            se,
            bse,
            "orchestrator_handle_seconds_count",
            function="step-execute",
            type="step.completed",
        )
        == 2
    )
    assert delta(se, bse, "orchestrator_runs_ended_total", tenant="beta", outcome="completed") == 1
    assert delta(se, bse, "orchestrator_run_duration_seconds_count") == 1
    assert delta(pc, bpc, "orchestrator_penalties_total", level="flow", penalty="throttle") == 1
    emitted = "orchestrator_events_emitted_total"
    assert delta(pc, bpc, emitted, type="policy.violation") == 1
    assert delta(se, bse, emitted, type="usage.reported") >= 1


@pytest.mark.parametrize(
    "series",
    [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "python_gc_collections_total",
        "python_info",
    ],
)
def test_the_standard_process_and_gc_series_are_exposed(series: str) -> None:
    from shared.runtime.metrics import exposition

    body = exposition()
    names = {
        line.split("{")[0].split(" ")[0]
        for line in body.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert series in names
