"""The cluster as the overlays set it up (docs/security.md): no function reachable from outside
the cluster, the flows namespace at Pod Security `restricted` and closed by default, and the
flow pods deploy renders with the overlay's own settings reaching what they need there.

Rendered with kustomize exactly as `kubectl apply -k` would (tests/packaging/test_manifests.py);
NetworkPolicies read with Kubernetes' semantics (tests/support/network_policies.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.deployment.desired_state import flow_desired_state
from shared.deployment.worker_settings import WorkerSettings
from shared.events import FlowDocument
from shared.model.policy import TenantLimits
from shared.ports.components import Component
from shared.settings import Settings
from tests.packaging.test_manifests import (
    Manifest,
    function_services,
    knative_services,
    of_kind,
    render,
    settings_env,
)
from tests.support.network_policies import Destination, egress_allowed, ingress_allowed

OVERLAYS = ("dev", "prod", "dev-oih", "dev-ferryman", "prod-oidc")


def flows_namespace(docs: tuple[Manifest, ...]) -> str:
    """KUBERNETES_NAMESPACE as deploy's ConfigMaps set it."""
    deploy = function_services(docs)["deploy"]
    (spec,) = deploy["spec"]["template"]["spec"]["containers"]
    names = {s["configMapRef"]["name"] for s in spec.get("envFrom", []) if "configMapRef" in s}
    found = [
        c["data"]["KUBERNETES_NAMESPACE"]
        for c in of_kind(docs, "ConfigMap")
        if c["metadata"]["name"] in names and "KUBERNETES_NAMESPACE" in c.get("data", {})
    ]
    return found[-1] if found else "flows"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_knative_service_is_reachable_from_outside_the_cluster(overlay: str) -> None:
    services = knative_services(render(overlay))
    assert services
    for service in services:
        labels = service["metadata"].get("labels") or {}
        assert labels.get("networking.knative.dev/visibility") == "cluster-local", service[
            "metadata"
        ]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_flows_namespace_enforces_pod_security_restricted(overlay: str) -> None:
    docs = render(overlay)
    namespace = flows_namespace(docs)
    [found] = [n for n in of_kind(docs, "Namespace") if n["metadata"]["name"] == namespace]
    labels = found["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_flows_namespace_is_closed_unless_deploy_opens_a_pod(overlay: str) -> None:
    docs = render(overlay)
    namespace = flows_namespace(docs)
    static = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["namespace"] == namespace]
    assert static, "no NetworkPolicy in the flows namespace"
    some_pod = {"app": "anything"}
    assert not egress_allowed(static, namespace, some_pod, Destination("93.184.216.34", 443))
    assert not egress_allowed(static, namespace, some_pod, Destination("169.254.169.254", 80))
    assert not ingress_allowed(static, namespace, some_pod)


def _flow_objects(docs: tuple[Manifest, ...]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A flow as deploy renders it with the overlay's settings (K_SINK as the SinkBinding
    injects it); its NetworkPolicies with the overlay's, and its pods' labels."""
    namespace = flows_namespace(docs)
    env = settings_env(docs, function_services(docs)["deploy"])
    functions_namespace = function_services(docs)["deploy"]["metadata"]["namespace"]
    env["K_SINK"] = (
        f"http://broker-ingress.knative-eventing.svc.cluster.local/{functions_namespace}/"
        "orchestrator"
    )
    worker = WorkerSettings.from_settings(Settings.from_env(env))
    node = {"id": "a", "componentId": "c", "function": "run"}
    flow = FlowDocument.parse(
        {
            "id": "f1",
            "tenant": "acme",
            "owners": [{"id": "u1", "type": "user"}],
            "graph": {"nodes": [node], "edges": []},
        }
    )
    component = Component(id="c", name="c", image="registry.example/c:1")
    state = flow_desired_state(flow, {"c": component}, TenantLimits(), worker)
    policies = [
        {**m, "metadata": {**m["metadata"], "namespace": namespace}}
        for m in state.manifests
        if m["kind"] == "NetworkPolicy"
    ]
    static = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["namespace"] == namespace]
    [deployment] = state.deployments()
    return [*static, *policies], deployment["spec"]["template"]["metadata"]["labels"]


def test_a_dev_flow_pod_reaches_the_dev_redis_and_the_broker_but_not_the_functions() -> None:
    docs = render("dev")
    policies, labels = _flow_objects(docs)
    namespace = flows_namespace(docs)
    [redis] = [
        d for d in of_kind(docs, "StatefulSet") + of_kind(docs, "Deployment") if "redis" in str(d)
    ][:1]
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    here = redis["metadata"]["namespace"]

    def reaches(to: Destination) -> bool:
        return egress_allowed(policies, namespace, labels, to)

    assert reaches(Destination("10.244.1.9", 6379, "TCP", here, redis_labels))
    assert reaches(Destination("10.244.1.4", 8080, "TCP", "knative-eventing"))
    assert reaches(Destination("10.244.0.3", 53, "UDP", "kube-system", {"k8s-app": "kube-dns"}))
    assert reaches(Destination("93.184.216.34", 443))
    assert not reaches(Destination("10.244.1.7", 8080, "TCP", here))  # a function's pod
    assert not reaches(Destination("10.96.0.1", 443))  # the API server
    assert not reaches(Destination("169.254.169.254", 80))
    assert not ingress_allowed(policies, namespace, labels)


@pytest.mark.parametrize("overlay", ("dev", "prod"))
def test_deploy_may_manage_the_network_policies_of_flows_only_there(overlay: str) -> None:
    docs = render(overlay)
    namespace = flows_namespace(docs)
    for role in of_kind(docs, "Role"):
        grants = {r for rule in role["rules"] for r in rule["resources"]}
        if "networkpolicies" in grants:
            assert role["metadata"]["namespace"] == namespace
