"""The Kubernetes driver: the real `kubernetes` client over HTTP against the fake API server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters.component_repository import Component
from shared.adapters.kubernetes import (
    FIELD_MANAGER,
    ApplyConflict,
    KubernetesConfigError,
    KubernetesDriver,
    KubernetesRejected,
    make_api_client,
    pod_last_error,
)
from shared.deployment.desired_state import flow_desired_state, with_flow_token
from shared.deployment.object_names import flow_selector
from shared.deployment.worker_settings import WorkerSettings
from shared.errors import PermanentError, TemporaryError
from shared.events import FlowDocument
from shared.model.policy import TenantLimits
from shared.ports.driver import MANAGED_SELECTOR
from tests.fakes.kube_api import FakeKubeApi


@pytest.fixture
def driver(kube_api: FakeKubeApi) -> Iterator[KubernetesDriver]:
    kube = KubernetesDriver(make_api_client(host=kube_api.url), "flows", request_timeout=15.0)
    yield kube
    kube.close()


def manifests(flow_id: str = "f1", replicas: int = 2, image: str = "img:1") -> list[dict[str, Any]]:
    doc = FlowDocument.parse(
        {
            "id": flow_id,
            "tenant": "acme",
            "owners": [{"id": "u1"}],
            "graph": {
                "nodes": [
                    {"id": "a", "componentId": "c", "nodeSettings": {"replicas": replicas}},
                ]
            },
        }
    )
    component = Component(id="c", name="c", image=image)
    state = flow_desired_state(doc, {"c": component}, TenantLimits(), WorkerSettings())
    return sorted(state.manifests, key=lambda m: m["kind"] != "Secret")


def deployment(items: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m for m in items if m["kind"] == "Deployment")


def test_apply_creates_then_a_second_apply_is_a_no_op(
    driver: KubernetesDriver, kube_api: FakeKubeApi
) -> None:
    objects = manifests()
    for m in objects:
        driver.apply(m)
    name = deployment(objects)["metadata"]["name"]
    version = kube_api.get("deployments", name)["metadata"]["resourceVersion"]  # type: ignore[index]
    for m in objects:
        driver.apply(m)
    stored = kube_api.get("deployments", name)
    assert stored is not None and stored["metadata"]["resourceVersion"] == version
    applies = [r for r in kube_api.requests if r.verb == "apply"]
    assert len(applies) == 6
    assert {r.field_manager for r in applies} == {FIELD_MANAGER}
    assert {r.content_type for r in applies} == {"application/apply-patch+yaml"}
    assert all(r.namespace == "flows" for r in applies)


def test_a_changed_object_is_updated_in_place(
    driver: KubernetesDriver, kube_api: FakeKubeApi
) -> None:
    for m in manifests(replicas=2):
        driver.apply(m)
    for m in manifests(replicas=4):
        driver.apply(m)
    [stored] = kube_api.objects("deployments")
    assert stored["spec"]["replicas"] == 4
    assert stored["metadata"]["generation"] == 2


def test_secret_carries_the_token_only_on_the_cluster(
    driver: KubernetesDriver, kube_api: FakeKubeApi
) -> None:
    for m in manifests():
        driver.apply(with_flow_token(m, "tok"))
    [secret] = kube_api.objects("secrets")
    assert "FLOW_TOKEN" in secret["data"]


def test_conflict_is_reapplied_with_force(driver: KubernetesDriver, kube_api: FakeKubeApi) -> None:
    kube_api.fail("apply", "deployments", 409)
    driver.apply(deployment(manifests()))
    attempts = [r for r in kube_api.requests if r.verb == "apply"]
    assert [(r.status, r.query.get("force")) for r in attempts] == [(409, None), (201, "true")]


def test_persistent_conflict_is_temporary(driver: KubernetesDriver, kube_api: FakeKubeApi) -> None:
    kube_api.fail("apply", "deployments", 409, times=10)
    with pytest.raises(ApplyConflict) as caught:
        driver.apply(deployment(manifests()))
    assert isinstance(caught.value, TemporaryError)
    assert kube_api.count("apply", ok=None) == 3


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(500, TemporaryError, id="500 is temporary"),
        pytest.param(503, TemporaryError, id="503 is temporary"),
        pytest.param(429, TemporaryError, id="429 is temporary"),
        pytest.param(403, TemporaryError, id="403 (RBAC being fixed) is temporary"),
        pytest.param(422, KubernetesRejected, id="422 validation is permanent"),
        pytest.param(400, KubernetesRejected, id="400 is permanent"),
    ],
)
def test_errors_are_wrapped(
    driver: KubernetesDriver, kube_api: FakeKubeApi, status: int, error: type[Exception]
) -> None:
    kube_api.fail("apply", "*", status, message="boom")
    with pytest.raises(error) as caught:
        driver.apply(deployment(manifests()))
    assert "boom" in str(caught.value)


@pytest.mark.parametrize("status", [422, 500])
def test_api_messages_are_redacted(
    driver: KubernetesDriver, kube_api: FakeKubeApi, status: int
) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmbG93In0.c2lnbmF0dXJlLXZhbHVl"
    kube_api.fail("apply", "*", status, message=f"data.FLOW_TOKEN: Invalid value: {token}")
    with pytest.raises((TemporaryError, KubernetesRejected)) as caught:
        driver.apply(deployment(manifests()))
    assert token not in str(caught.value) and "Invalid value" in str(caught.value)


def test_invalid_object_is_rejected_by_the_api(driver: KubernetesDriver) -> None:
    bad = deployment(manifests())
    bad["spec"]["template"]["spec"]["containers"][0]["image"] = ""
    with pytest.raises(KubernetesRejected) as caught:
        driver.apply(bad)
    assert isinstance(caught.value, PermanentError)
    assert "image" in caught.value.message


def test_slow_api_is_a_timeout_and_temporary(kube_api: FakeKubeApi) -> None:
    kube = KubernetesDriver(make_api_client(host=kube_api.url), "flows", request_timeout=0.2)
    kube_api.fail("list", "deployments", None, delay=1.0, times=10)
    with pytest.raises(TemporaryError):
        kube.list_objects("Deployment")
    kube.close()


def test_unreachable_api_is_temporary() -> None:
    kube = KubernetesDriver(
        make_api_client(host="http://127.0.0.1:9"), "flows", request_timeout=0.5
    )
    with pytest.raises(TemporaryError):
        kube.list_managed()
    kube.close()


def test_list_managed_ignores_unlabelled_objects(
    driver: KubernetesDriver, kube_api: FakeKubeApi
) -> None:
    kube_api.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "someone-elses", "labels": {"app": "x"}},
            "data": {},
        }
    )
    for m in manifests("f1") + manifests("f2"):
        driver.apply(m)
    assert {o.name for o in driver.list_managed()} == {
        m["metadata"]["name"] for m in manifests("f1") + manifests("f2")
    }
    assert {o.kind for o in driver.list_managed(flow_selector("f1"))} == {
        "Deployment",
        "Secret",
        "NetworkPolicy",
    }
    assert all(o.labels.get("app") is None for o in driver.list_managed())
    assert kube_api.requests[-1].query["labelSelector"].startswith(MANAGED_SELECTOR)


def test_get_and_delete(driver: KubernetesDriver) -> None:
    dep = deployment(manifests())
    name = dep["metadata"]["name"]
    assert driver.get("Deployment", name) is None
    driver.apply(dep)
    assert driver.get("Deployment", name)["spec"]["replicas"] == 2  # type: ignore[index]
    assert driver.delete("Deployment", name) is True
    assert driver.delete("Deployment", name) is False


def test_readiness_follows_ready_replicas(driver: KubernetesDriver, kube_api: FakeKubeApi) -> None:
    dep = deployment(manifests(replicas=3))
    name = dep["metadata"]["name"]
    driver.apply(dep)
    [r] = driver.readiness(flow_selector("f1"))
    assert (r.desired, r.ready, r.is_ready, r.error) == (3, 0, False, None)
    kube_api.set_ready(name, 2)
    assert not driver.readiness()[0].is_ready
    kube_api.set_ready(name, 3)
    assert driver.readiness()[0].is_ready


@pytest.mark.parametrize(
    ("reason", "message", "state", "expected"),
    [
        pytest.param(
            "ImagePullBackOff",
            "pull access denied",
            "waiting",
            "ImagePullBackOff: pull access denied",
            id="a waiting reason",
        ),
        pytest.param(
            "Error",
            "component crashed",
            "terminated",
            "Error: component crashed",
            id="the last termination",
        ),
    ],
)
def test_readiness_reports_the_pods_last_error(
    driver: KubernetesDriver,
    kube_api: FakeKubeApi,
    reason: str,
    message: str,
    state: str,
    expected: str,
) -> None:
    dep = deployment(manifests(replicas=1))
    driver.apply(dep)
    kube_api.set_pod_error(dep["metadata"]["name"], reason, message, state=state)
    [r] = driver.readiness()
    assert r.error == expected


def test_pod_last_error_ignores_normal_start() -> None:
    pod = {
        "status": {
            "containerStatuses": [
                {"ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
            ]
        }
    }
    assert pod_last_error(pod) is None
    unschedulable = {
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes",
                }
            ]
        }
    }
    assert pod_last_error(unschedulable) == "Unschedulable: 0/3 nodes"


def test_pod_usage_from_metrics_api(driver: KubernetesDriver, kube_api: FakeKubeApi) -> None:
    dep = deployment(manifests(replicas=2))
    driver.apply(dep)
    kube_api.set_usage(dep["metadata"]["name"], cpu="250m", memory="64Mi")
    usage = driver.pod_usage(flow_selector("f1"))
    assert len(usage) == 2
    assert usage[0].cpu_cores == pytest.approx(0.25)
    assert usage[0].memory_bytes == 64 * 2**20
    assert usage[0].labels["orchestrator.openintegrationhub.org/flow"] == "f1"


def test_bearer_token_is_sent(kube_api: FakeKubeApi) -> None:
    client = make_api_client(host=kube_api.url, token="sa-token")
    assert client.configuration.auth_settings()["BearerToken"]["value"] == "Bearer sa-token"
    client.close()


def test_missing_kubeconfig_names_the_variable(tmp_path: Any) -> None:
    with pytest.raises(KubernetesConfigError) as caught:
        make_api_client(env={"KUBECONFIG": str(tmp_path / "none")})
    assert "KUBECONFIG" in caught.value.message


def test_the_fake_serves_discovery_for_the_dynamic_client(kube_api: FakeKubeApi) -> None:
    from kubernetes.dynamic import DynamicClient

    client = make_api_client(host=kube_api.url)
    dynamic = DynamicClient(client)
    deployments = dynamic.resources.get(api_version="apps/v1", kind="Deployment")
    secrets = dynamic.resources.get(api_version="v1", kind="Secret")
    assert (deployments.namespaced, secrets.namespaced) == (True, True)
    body = deployment(manifests())
    name = body["metadata"]["name"]
    dynamic.server_side_apply(
        deployments, body=body, name=name, namespace="flows", field_manager=FIELD_MANAGER
    )
    assert [d.metadata.name for d in dynamic.get(deployments, namespace="flows").items] == [name]
    client.close()


def write_kubeconfig(path: Any, server: str) -> str:
    path.write_text(
        f"""
apiVersion: v1
kind: Config
current-context: test
clusters: [{{name: fake, cluster: {{server: "{server}"}}}}]
users: [{{name: ci, user: {{token: kubeconfig-token}}}}]
contexts: [{{name: test, context: {{cluster: fake, user: ci}}}}]
"""
    )
    return str(path)


def test_a_kubeconfig_is_used_when_no_host_is_given(kube_api: FakeKubeApi, tmp_path: Any) -> None:
    client = make_api_client(env={"KUBECONFIG": write_kubeconfig(tmp_path / "c", kube_api.url)})
    assert client.configuration.host == kube_api.url.rstrip("/")
    assert client.configuration.auth_settings()["BearerToken"]["value"] == "Bearer kubeconfig-token"
    driver = KubernetesDriver(client, "flows", request_timeout=2.0)
    try:
        driver.apply(deployment(manifests()))
    finally:
        driver.close()
    assert len(kube_api.objects("deployments")) == 1


def test_inside_a_pod_the_service_account_wins_over_a_kubeconfig(
    kube_api: FakeKubeApi, tmp_path: Any
) -> None:
    """KUBERNETES_SERVICE_HOST means in-cluster: a kubeconfig lying around is never a fallback."""
    if os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"):
        pytest.skip("these tests run inside a pod: its service account would be used")
    env = {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBECONFIG": write_kubeconfig(tmp_path / "c", kube_api.url),
    }
    with pytest.raises(KubernetesConfigError) as caught:
        make_api_client(env=env)  # no service account files on this machine
    assert "in-cluster" in caught.value.message
