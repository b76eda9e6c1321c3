"""The Kubernetes driver against a REAL cluster (kind, k3s, ...): opt-in, never in CI.

CI has no cluster: there the same driver is tested against tests/fakes/kube_api.py over real
HTTP (test_kubernetes_driver.py, test_deploy.py). To run these against a cluster:

    kind create cluster            # or: k3d cluster create / a k3s node
    kubectl create namespace co-test
    ORCHESTRATOR_TEST_REAL_CLUSTER=1 KUBECONFIG=~/.kube/config \
        .venv/bin/pytest tests/adapters/test_kubernetes_real.py -v

They apply a flow's objects with server-side apply, wait for real readiness (the `pause`
image), check that a second apply is a no-op, that an unlabelled object is never listed as
ours, and that a bad image surfaces as the pods' last error; everything is deleted after.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters.component_repository import Component
from shared.adapters.kubernetes import KubernetesDriver, make_api_client
from shared.deployment.desired_state import flow_desired_state
from shared.deployment.object_names import flow_selector
from shared.deployment.worker_settings import WorkerSettings
from shared.events import FlowDocument
from shared.model.policy import TenantLimits
from shared.ports.driver import Readiness

pytestmark = pytest.mark.skipif(
    os.environ.get("ORCHESTRATOR_TEST_REAL_CLUSTER") != "1",
    reason="needs a real cluster: set ORCHESTRATOR_TEST_REAL_CLUSTER=1 (see the module doc)",
)
NAMESPACE = os.environ.get("ORCHESTRATOR_TEST_NAMESPACE", "co-test")
PAUSE = "registry.k8s.io/pause:3.9"


@pytest.fixture
def driver() -> Iterator[KubernetesDriver]:
    kube = KubernetesDriver(make_api_client(), NAMESPACE)
    yield kube
    for obj in kube.list_managed():
        kube.delete(obj.kind, obj.name)
    kube.close()


def manifests(flow_id: str, image: str) -> list[dict[str, Any]]:
    doc = FlowDocument.parse(
        {
            "id": flow_id,
            "tenant": "acme",
            "owners": [{"id": "alice"}],
            "graph": {"nodes": [{"id": "a", "componentId": "c", "nodeSettings": {"replicas": 1}}]},
        }
    )
    state = flow_desired_state(
        doc, {"c": Component(id="c", name="c", image=image)}, TenantLimits(), WorkerSettings()
    )
    return sorted(state.manifests, key=lambda m: m["kind"] != "Secret")


def wait_for(driver: KubernetesDriver, flow_id: str, done: Any, seconds: float) -> Readiness:
    deadline = time.monotonic() + seconds
    while True:
        states = driver.readiness(flow_selector(flow_id))
        if states and done(states[0]):
            return states[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {seconds}s: {states}")
        time.sleep(2)


def test_apply_ready_noop_and_delete(driver: KubernetesDriver) -> None:
    flow_id = f"real-{uuid.uuid4().hex[:8]}"
    objects = manifests(flow_id, PAUSE)
    for m in objects:
        driver.apply(m)
    wait_for(driver, flow_id, lambda r: r.is_ready, 180)
    name = objects[-1]["metadata"]["name"]
    before = driver.get("Deployment", name)["metadata"]["resourceVersion"]  # type: ignore[index]
    for m in objects:
        driver.apply(m)
    after = driver.get("Deployment", name)["metadata"]["resourceVersion"]  # type: ignore[index]
    assert before == after
    for m in reversed(objects):
        assert driver.delete(m["kind"], m["metadata"]["name"])


def test_unlabelled_objects_are_not_ours(driver: KubernetesDriver) -> None:
    name = f"not-ours-{uuid.uuid4().hex[:8]}"
    driver.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {}})
    try:
        assert name not in {o.name for o in driver.list_managed()}
    finally:
        driver.delete("Secret", name)


def test_bad_image_is_the_pods_last_error(driver: KubernetesDriver) -> None:
    flow_id = f"real-{uuid.uuid4().hex[:8]}"
    for m in manifests(flow_id, "registry.invalid/no-such-image:1"):
        driver.apply(m)
    state = wait_for(driver, flow_id, lambda r: r.error is not None, 120)
    assert "ErrImagePull" in str(state.error) or "ImagePullBackOff" in str(state.error)
