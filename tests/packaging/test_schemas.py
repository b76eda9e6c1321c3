"""Manifests against the real Kubernetes schemas (kubernetes-validate --strict, the API's own
OpenAPI): every core object both overlays render, the pod templates of the Knative Services
(validated as the PodSpec they are), and the Deployments and Secrets deploy applies for flows.

and every Knative and prometheus-operator object against models generated from the upstream
CRDs (the cloudcoil-models-* packages from PyPI; upstream CRD files are not copied into this
repository). No cluster runs here.
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

from shared.deployment.desired_state import flow_desired_state
from shared.deployment.worker_settings import WorkerSettings
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


OVERLAYS = ("dev", "prod", "dev-oih")


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
        for overlay in OVERLAYS
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
        for overlay in OVERLAYS
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
    for overlay in OVERLAYS:
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


@pytest.mark.parametrize("overlay", OVERLAYS)
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


# --------------------------------------------------------------------------- custom resources
# Knative and prometheus-operator objects against models generated from the upstream CRDs'
# openAPIV3Schema (the cloudcoil-models-* packages on PyPI: Knative Serving 1.17.0, Eventing
# 1.17.1, prometheus-operator 0.80.1). A round trip through the model must give the object
# back unchanged: a misspelt or unknown field is dropped by it, a wrong type refused.
CRD_MODULES = {
    "serving.knative.dev/v1": "cloudcoil.models.knative_serving.serving.v1",
    "eventing.knative.dev/v1": "cloudcoil.models.knative_eventing.eventing.v1",
    "sources.knative.dev/v1": "cloudcoil.models.knative_eventing.sources.v1",
    "monitoring.coreos.com/v1": "cloudcoil.models.prometheus_operator.v1",
}
# Kinds newer than the generated models: EventTransform came with Knative Eventing 1.18.
WITHOUT_MODEL = {("eventing.knative.dev/v1alpha1", "EventTransform")}


def custom_objects() -> list[Any]:
    monitoring = subprocess.run(
        [shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl"), "kustomize",
         str(ROOT / "knative" / "monitoring")],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    sources = {
        **{overlay: rendered(overlay) for overlay in OVERLAYS},
        "monitoring": tuple(d for d in yaml.safe_load_all(monitoring) if d),
    }
    return [
        pytest.param(doc, id=f"{where}-{doc['kind']}-{doc['metadata']['name']}")
        for where, docs in sources.items()
        for doc in docs
        if doc["apiVersion"] not in CORE_GROUPS
        and (doc["apiVersion"], doc["kind"]) not in WITHOUT_MODEL
    ]


def crd_model(resource: dict[str, Any]) -> Any:
    import importlib
    import warnings

    module_name = CRD_MODULES.get(resource["apiVersion"])
    assert module_name, f"no CRD model for {resource['apiVersion']}: add one or to WITHOUT_MODEL"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generated models shadow a few Resource attributes
        module = importlib.import_module(module_name)
    return getattr(module, resource["kind"])


def dropped(sent: Any, back: Any, path: str = "") -> list[str]:
    if isinstance(sent, dict) and isinstance(back, dict):
        out = [f"{path}/{k}" for k in sent if k not in back]
        return out + [
            p for k in sent if k in back for p in dropped(sent[k], back[k], f"{path}/{k}")
        ]
    if isinstance(sent, list) and isinstance(back, list):
        return [
            p
            for i, (a, b) in enumerate(zip(sent, back, strict=False))
            for p in dropped(a, b, f"{path}[{i}]")
        ]
    return [] if sent == back else [f"{path}: {sent!r} became {back!r}"]


@pytest.mark.parametrize("resource", custom_objects())
def test_every_custom_resource_matches_its_upstream_crd(resource: dict[str, Any]) -> None:
    model = crd_model(resource).model_validate(resource, strict=True)
    back = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert dropped(resource, back) == []


def test_the_crd_check_covers_every_custom_kind_we_ship() -> None:
    kinds = {(p.values[0]["apiVersion"], p.values[0]["kind"]) for p in custom_objects()}
    assert kinds >= {
        ("serving.knative.dev/v1", "Service"),
        ("eventing.knative.dev/v1", "Broker"),
        ("eventing.knative.dev/v1", "Trigger"),
        ("sources.knative.dev/v1", "PingSource"),
        ("sources.knative.dev/v1", "SinkBinding"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
    }


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d["spec"].update(filtr={"attributes": {}}), id="a misspelt field"),
        pytest.param(lambda d: d["spec"].update(broker=["not", "a", "string"]), id="a wrong type"),
    ],
)
def test_the_crd_check_refuses_a_broken_trigger(change: Any) -> None:
    (trigger, *_) = [d for d in rendered("dev") if d["kind"] == "Trigger"]
    broken = copy.deepcopy(trigger)
    change(broken)
    try:
        back = (
            crd_model(broken)
            .model_validate(broken)
            .model_dump(by_alias=True, exclude_unset=True, mode="json")
        )
    except ValueError:  # pydantic's ValidationError
        return
    assert dropped(broken, back) != []
