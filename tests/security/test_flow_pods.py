"""Attack: a hostile component image escapes its pod, or reaches into the cluster from it.

A flow pod runs the tenant's code. Deployed through the deploy function onto the fake
Kubernetes API, every pod it renders passes Pod Security `restricted` (checked rule by rule
below, as the API server's admission would) with a read-only root and a writable /tmp; and
the NetworkPolicies it applies beside them, read with Kubernetes' semantics
(tests/support/network_policies.py), let the pod reach the internet, DNS, its queue, the
broker ingress and the hub's services, and nothing else of the cluster: not the cloud
metadata address, not the API server, not the functions, not another flow's pods. Nothing may
connect to a flow pod.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from shared.clock import FakeClock
from shared.deployment.object_names import deployment_name
from shared.deployment.worker_settings import WorkerSettings
from shared.model.policy import Policy, parse_policy
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.deploy_harness import DeployHarness, flow_doc, step
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.network_policies import Destination, egress_allowed, ingress_allowed
from tests.support.pod_security import restricted_violations

SETTINGS = Settings(
    redis_url="redis://:orchestrator-password@redis.orchestrator.svc.cluster.local:6379/0",
    orchestrator_key=TEST_KEY,
    k_sink="http://broker-ingress.knative-eventing.svc.cluster.local/orchestrator/default",
    cluster_node_cidrs=("172.18.0.0/16",),
)


@pytest.fixture
def deploy(
    redis: Redis, clock: FakeClock, kube_api: FakeKubeApi, component_repo: FakeComponentRepo
) -> Iterator[DeployHarness]:
    component_repo.add("comp", replicas=1)
    component_repo.add("scratch", replicas=1)
    kube_api.auto_ready = True
    policy = parse_policy({"writable_root_components": ["scratch"]})
    harness = DeployHarness(redis, clock, kube_api, component_repo, policy=policy)
    harness.services.worker = WorkerSettings.from_settings(SETTINGS)
    yield harness
    harness.close()


def pod_of(kube: FakeKubeApi, flow_id: str, node: str) -> dict[str, Any]:
    deployment = kube.get("deployments", deployment_name(flow_id, node))
    assert deployment is not None
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


# ---- the pod ---------------------------------------------------------------------------------
def test_every_flow_pod_passes_pod_security_restricted(deploy: DeployHarness) -> None:
    deploy.start(flow_doc("flow-1", [step("a"), step("b", "scratch")]))
    deploy.repo.add("logger", is_global=True, replicas=1)
    deploy.start_component("logger")
    deployments = deploy.kube.objects("deployments")
    assert len(deployments) == 3
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert restricted_violations(pod) == [], deployment["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # no other Service's address in its env


def test_the_root_is_read_only_unless_the_policy_lets_the_component_write_it(
    deploy: DeployHarness,
) -> None:
    deploy.start(flow_doc("flow-1", [step("a"), step("b", "scratch")]))
    for node, read_only in (("a", True), ("b", False)):
        spec = pod_of(deploy.kube, "flow-1", node)["spec"]
        [container] = spec["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is read_only
        [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        [volume] = [v for v in spec["volumes"] if v["name"] == tmp["name"]]
        assert "emptyDir" in volume and not tmp.get("readOnly")


def test_writable_root_components_is_a_list_of_ids() -> None:
    assert Policy().writable_root_components == frozenset()
    with pytest.raises(Exception, match="writable_root_components"):
        parse_policy({"writable_root_components": "scratch"})


# ---- the network -----------------------------------------------------------------------------
def _policies(kube: FakeKubeApi) -> list[dict[str, Any]]:
    return kube.objects("networkpolicies")


FROM_A_FLOW_POD = [
    ("the internet (an outside API)", Destination("93.184.216.34", 443), True),
    ("an outside DNS server", Destination("1.1.1.1", 53, "UDP"), True),
    ("the cloud metadata address", Destination("169.254.169.254", 80), False),
    ("the API server's Service address", Destination("10.96.0.1", 443), False),
    ("the API server on a node", Destination("172.18.0.2", 6443), False),
    ("a kubelet", Destination("172.18.0.3", 10250), False),
    (
        "cluster DNS",
        Destination("10.244.0.3", 53, "UDP", "kube-system", {"k8s-app": "kube-dns"}),
        True,
    ),
    ("another pod of kube-system", Destination("10.244.0.9", 443, "TCP", "kube-system"), False),
    ("its queue (Redis)", Destination("10.244.2.9", 6379, "TCP", "orchestrator"), True),
    ("a function by Redis", Destination("10.244.2.7", 8080, "TCP", "orchestrator"), False),
    ("the broker ingress", Destination("10.244.1.4", 8080, "TCP", "knative-eventing"), True),
    ("the hub's secret service", Destination("10.244.4.2", 3000, "TCP", "oih"), True),
    ("the hub's snapshot service", Destination("10.244.4.3", 1234, "TCP", "oih"), True),
    ("the hub's attachment service", Destination("10.244.4.4", 3002, "TCP", "oih"), True),
    ("the hub's IAM", Destination("10.244.4.5", 3099, "TCP", "oih"), False),
    ("another flow's pod", Destination("10.244.5.5", 8080, "TCP", "flows"), False),
    ("a pod by its address alone", Destination("10.244.6.6", 8080), False),
]


@pytest.mark.parametrize(
    ("destination", "allowed"),
    [(to, allowed) for _, to, allowed in FROM_A_FLOW_POD],
    ids=[f"{'reaches' if ok else 'never reaches'} {what}" for what, _, ok in FROM_A_FLOW_POD],
)
def test_a_flow_pod_reaches_the_internet_and_its_services_only(
    deploy: DeployHarness, destination: Destination, allowed: bool
) -> None:
    deploy.start(flow_doc("flow-1", [step("a")]))
    labels = pod_of(deploy.kube, "flow-1", "a")["metadata"]["labels"]
    assert egress_allowed(_policies(deploy.kube), "flows", labels, destination) is allowed


def test_nothing_may_connect_to_a_flow_pod(deploy: DeployHarness) -> None:
    deploy.start(flow_doc("flow-1", [step("a")]))
    labels = pod_of(deploy.kube, "flow-1", "a")["metadata"]["labels"]
    assert ingress_allowed(_policies(deploy.kube), "flows", labels) is False


def test_no_setting_opens_the_metadata_address(
    deploy: DeployHarness,
) -> None:
    """A hub service configured at 169.254.169.254 (by mistake or malice) is not let through."""
    settings = Settings(
        redis_url=SETTINGS.redis_url,
        orchestrator_key=TEST_KEY,
        secret_service_url="http://169.254.169.254:80/latest/meta-data",
    )
    deploy.services.worker = WorkerSettings.from_settings(settings)
    deploy.start(flow_doc("flow-1", [step("a")]))
    labels = pod_of(deploy.kube, "flow-1", "a")["metadata"]["labels"]
    metadata = Destination("169.254.169.254", 80)
    assert egress_allowed(_policies(deploy.kube), "flows", labels, metadata) is False


def test_connectors_are_told_where_the_hub_services_are(deploy: DeployHarness) -> None:
    """As OIH's orchestrator passes them, without a trailing slash."""
    import base64

    deploy.start(flow_doc("flow-1", [step("a")]))
    secret = deploy.kube.get("secrets", deployment_name("flow-1", "a"))
    assert secret is not None
    env = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert env["SECRET_SERVICE_BASE_URL"] == SETTINGS.secret_service_url
    assert env["SNAPSHOTS_SERVICE_BASE_URL"] == SETTINGS.snapshots_service_url
    assert env["ATTACHMENT_STORAGE_SERVICE_BASE_URL"] == SETTINGS.attachment_storage_service_url
    assert "orchestrator-password" not in str(deploy.kube.objects("networkpolicies"))
