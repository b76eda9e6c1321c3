"""Property: whatever the order of starts, stops, penalties and drift, after a reconcile tick
the cluster holds exactly the objects of the wanted flows, at their replicas (0 while
suspended), and nothing else of ours; objects that are not ours are never touched."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from shared.clock import FakeClock
from shared.deployment.object_names import deployment_name, flow_selector
from tests.deploy_harness import DeployHarness, flow_doc, step
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.events import cloudevent

FLOWS = ("f1", "f2")
BASE = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

operations = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.sampled_from(FLOWS), st.integers(0, 3)),
        st.tuples(st.just("stop"), st.sampled_from(FLOWS), st.just(0)),
        st.tuples(st.just("suspend"), st.just("acme"), st.just(0)),
        st.tuples(st.just("restore"), st.just("acme"), st.just(0)),
        st.tuples(st.just("drift"), st.sampled_from(FLOWS), st.integers(0, 9)),
    ),
    max_size=8,
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations)
def test_reconcile_converges_to_the_wanted_flows(
    redis: Redis, component_repo: FakeComponentRepo, ops: list[tuple[str, str, int]]
) -> None:
    redis.flushall()
    component_repo.add("comp")
    kube = FakeKubeApi().start()
    kube.auto_ready = True
    kube.put(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "someone-else", "labels": {"app": "x"}},
            "spec": {"replicas": 4},
        }
    )
    harness = DeployHarness(redis, FakeClock(), kube, component_repo)
    wanted: dict[str, int] = {}
    suspended = False
    try:
        for version, (op, subject, number) in enumerate(ops, start=1):
            when = datetime.fromtimestamp(BASE + version, UTC).isoformat()
            if op == "start":
                doc = flow_doc(subject, [step("a", replicas=number)], updated=version)
                harness.start(doc)
                wanted[subject] = number
            elif op == "stop":
                harness.handle(cloudevent("flow.stopping", {"id": subject}, time=when))
                wanted.pop(subject, None)
            elif op in ("suspend", "restore"):
                suspended = op == "suspend"
                event = "suspended" if suspended else "restored"
                harness.penalty("tenant", subject, "suspend" if suspended else None, event)
            else:
                kube.remove("deployments", deployment_name(subject, "a"))
            harness.tick()
            for flow_id in FLOWS:
                expected = {"a": 0 if suspended else wanted[flow_id]} if flow_id in wanted else {}
                assert harness.replicas(flow_selector(flow_id)) == expected, (op, flow_id)
                assert len(kube.objects("secrets", flow_selector(flow_id))) == len(expected)
            assert kube.get("deployments", "someone-else") is not None
            assert harness.events("flow.failed") == []
    finally:
        harness.close()
        kube.stop()
