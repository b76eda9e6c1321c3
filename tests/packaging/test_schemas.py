"""Manifests against the real Kubernetes schemas (kubernetes-validate --strict, the API's own
OpenAPI): every core object both overlays render, the pod templates of the Knative Services
(validated as the PodSpec they are), and the Deployments and Secrets deploy applies for flows.

No cluster runs here. The Knative, eventing and prometheus-operator CRD schemas are not
vendored (upstream files are not committed to this repository); their objects are checked by
structure in test_manifests.py and test_monitoring.py.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.deployment.desired_state import WorkerSettings, flow_desired_state
from shared.events import FlowDocument
from shared.model.policy import TenantLimits
from shared.ports.components import Component, ResourceSpec

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = (
    "1.33.0"  # the oldest release the manifests promise (docs/deploy-to-cluster.md)
)
CORE_GROUPS = ("v1", "apps/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1",
               "policy/v1", "batch/v1", "autoscaling/v2")  # fmt: skip


KNATIVE_REVISION_FIELDS = ("containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds",
                           "idleTimeoutSeconds")  # fmt: skip


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "knative" / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def core_objects() -> list[Any]:
    return [
        pytest.param(doc, id=f"{overlay}-{doc['kind']}-{doc['metadata']['name']}")
        for overlay in ("dev", "prod")
        for doc in rendered(overlay)
        if doc["apiVersion"] in CORE_GROUPS
    ]


@pytest.mark.parametrize("resource", core_objects())
def test_every_core_object_of_both_overlays_passes_strict_validation(
    resource: dict[str, Any],
) -> None:
    validate(resource)


def knative_pod_templates() -> list[Any]:
    return [
        pytest.param(doc, id=f"{overlay}-{doc['metadata']['name']}")
        for overlay in ("dev", "prod")
        for doc in rendered(overlay)
        if doc["kind"] == "Service" and doc["apiVersion"] == "serving.knative.dev/v1"
    ]


def with_knative_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """What Knative's webhook fills in before a revision's pod exists: a container name, and
    the user port for HTTP probes that name none (Knative routes them through the queue-proxy)."""
    spec = copy.deepcopy(spec)
    for knative_only in KNATIVE_REVISION_FIELDS:  # RevisionSpec's own, beside the PodSpec
        spec.pop(knative_only, None)
    for index, container in enumerate(spec.get("containers", [])):
        container.setdefault("name", f"user-container-{index}")
        port = (container.get("ports") or [{"containerPort": 8080}])[0]["containerPort"]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            http = container.get(probe, {}).get("httpGet")
            if http is not None:
                http.setdefault("port", port)
    return spec


@pytest.mark.parametrize("service", knative_pod_templates())
def test_each_knative_service_template_is_a_valid_pod_spec(service: dict[str, Any]) -> None:
    template = service["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": service["metadata"]["name"], **template.get("metadata", {})},
        "spec": with_knative_defaults(template["spec"]),
    }
    validate(pod)


def test_both_overlays_have_core_objects_to_check() -> None:
    """Guards the tables above against an empty parametrization."""
    for overlay in ("dev", "prod"):
        kinds = {doc["kind"] for doc in rendered(overlay) if doc["apiVersion"] in CORE_GROUPS}
        assert {"ServiceAccount", "Role", "RoleBinding", "ConfigMap"} <= kinds, overlay
    assert len(knative_pod_templates()) >= 8


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d["spec"].update(replicaz=1), id="an unknown field"),
        pytest.param(lambda d: d["spec"].update(replicas="two"), id="a string for an integer"),
        pytest.param(lambda d: d["spec"].pop("selector"), id="a missing required field"),
    ],
)
def test_the_validator_refuses_what_the_api_would(change: Any) -> None:
    """The check can fail: the same Deployment, broken three ways."""
    (deployment,) = flow_deployments(replicas=1)
    broken = copy.deepcopy(deployment)
    change(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def flow_deployments(replicas: int) -> list[dict[str, Any]]:
    flow = FlowDocument.parse(
        {
            "id": "flow:with.odd_chars",
            "tenant": "acme",
            "owners": [{"id": "u1", "type": "user"}],
            "graph": {
                "nodes": [
                    {"id": "a", "componentId": "c", "function": "run",
                     "nodeSettings": {"replicas": replicas}},
                ],
                "edges": [],
            },
        }
    )  # fmt: skip
    component = Component(
        id="c",
        name="c",
        image="registry.example/c:1",
        resources=ResourceSpec(cpu_request="50m", memory_limit="256Mi"),
    )
    state = flow_desired_state(
        flow, {"c": component}, TenantLimits(), WorkerSettings(k_sink="http://broker")
    )
    return [m for m in state.manifests if m["kind"] == "Deployment"]


@pytest.mark.parametrize("replicas", [0, 1, 3])
def test_the_objects_deploy_applies_for_a_flow_pass_strict_validation(replicas: int) -> None:
    flow = FlowDocument.parse(
        {
            "id": "flow-1",
            "tenant": "acme",
            "owners": [{"id": "u1", "type": "user"}],
            "graph": {
                "nodes": [
                    {"id": "a", "componentId": "c", "function": "run",
                     "nodeSettings": {"replicas": replicas}},
                    {"id": "b", "componentId": "c", "function": "run"},
                ],
                "edges": [{"source": "a", "target": "b"}],
            },
        }
    )  # fmt: skip
    state = flow_desired_state(
        flow,
        {"c": Component(id="c", name="c", image="registry.example/c:1")},
        TenantLimits(),
        WorkerSettings(k_sink="http://broker"),
    )
    assert {m["kind"] for m in state.manifests} >= {"Deployment", "Secret"}
    for manifest in state.manifests:
        validate(manifest)


RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_object_carries_the_recommended_labels(overlay: str) -> None:
    missing = [
        f"{doc['kind']}/{doc['metadata']['name']}: {label}"
        for doc in rendered(overlay)
        for label in RECOMMENDED_LABELS
        if label not in (doc["metadata"].get("labels") or {})
    ]
    assert missing == []
    functions = [
        d for d in rendered(overlay) if d["kind"] == "Service" and "serving" in d["apiVersion"]
    ]
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in functions} >= {
        "flow-start", "deploy", "step-execute", "policy-check",
    }  # fmt: skip
