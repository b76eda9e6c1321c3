"""Desired state: names, labels, replicas, resources, suspension, hashing (pure functions)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import keys
from shared.deployment.desired_state import (
    ReplicaBudgetExceeded,
    clamp_replicas,
    clamp_resources,
    component_desired_state,
    desired_hash,
    flow_desired_state,
    suspended,
    with_flow_token,
)
from shared.deployment.object_names import (
    FLOW_LABEL,
    NODE_LABEL,
    TENANT_LABEL,
    USER_LABEL,
    deployment_name,
    global_name,
)
from shared.deployment.worker_settings import WorkerSettings
from shared.errors import PermanentError
from shared.events import FlowDocument
from shared.model.policy import Resources, TenantLimits
from shared.ports.components import Component, ComponentInvalid, ResourceSpec
from shared.ports.driver import DEPLOYMENT_LABEL, MANAGED_BY_LABEL, label_value, secret_environment
from tests.fakes.kube_api import _validate

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True)
WORKER = WorkerSettings(queue_backend="redis", redis_url="redis://r:6379/0", k_sink="http://sink")
LIMITS = TenantLimits()


def component(cid: str = "c", **kw: Any) -> Component:
    return Component(id=cid, name=cid, image="reg/c:1", **kw)


def flow(
    nodes: list[dict[str, Any]] | None = None,
    flow_id: str = "flow-1",
    tenant: str = "acme",
    owner: str = "u1",
) -> FlowDocument:
    nodes = nodes or [{"id": "a", "componentId": "c", "function": "run"}]
    return FlowDocument.parse(
        {
            "id": flow_id,
            "tenant": tenant,
            "owners": [{"id": owner, "type": "user"}],
            "graph": {"nodes": nodes, "edges": []},
        }
    )


def node(node_id: str, replicas: int | None = None, cid: str = "c", **kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": node_id, "componentId": cid, "function": "run", **kw}
    if replicas is not None:
        data["nodeSettings"] = {"replicas": replicas}
    return data


def deployments_by_node(state: Any) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"][NODE_LABEL]: d for d in state.deployments()}


# ---- names and labels ------------------------------------------------------------------------
@given(flow_id=IDS, node_id=IDS)
@settings(max_examples=200, deadline=None)
def test_names_are_dns_labels_with_a_hash_suffix(flow_id: str, node_id: str) -> None:
    name = deployment_name(flow_id, node_id)
    assert DNS_LABEL.match(name) and len(name) <= 63
    assert re.search(r"-[0-9a-f]{16}$", name)  # 64 bits: no one finds another's name by trying


@given(a=st.tuples(IDS, IDS), b=st.tuples(IDS, IDS))
@settings(max_examples=200, deadline=None)
def test_different_steps_never_share_a_name(a: tuple[str, str], b: tuple[str, str]) -> None:
    if a != b:
        assert deployment_name(*a) != deployment_name(*b)


def test_long_ids_are_shortened_fairly() -> None:
    name = deployment_name("f" * 100, "step-1")
    assert len(name) <= 63 and "-step-1-" in name


@given(value=st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_label_values_are_always_valid(value: str) -> None:
    assert LABEL_VALUE.match(label_value(value)) and len(label_value(value)) <= 63


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("acme", "acme", id="a plain id stays as it is"),
        pytest.param("", "", id="empty stays empty"),
        pytest.param("a:b", None, id="a colon is replaced and hashed"),
        pytest.param("x" * 64, None, id="too long is shortened and hashed"),
    ],
)
def test_label_value_table(raw: str, expected: str | None) -> None:
    value = label_value(raw)
    if expected is not None:
        assert value == expected
    else:
        assert value != raw and re.search(r"-[0-9a-f]{8}$", value)


def test_labels_and_annotations_of_a_step() -> None:
    state = flow_desired_state(
        flow(flow_id="f:1", owner="user@x"), {"c": component()}, LIMITS, WORKER
    )
    deployment = state.deployments()[0]
    labels = deployment["metadata"]["labels"]
    assert labels[MANAGED_BY_LABEL] == "component-orchestrator"
    assert labels["app.kubernetes.io/name"] == "c"
    assert labels[TENANT_LABEL] == "acme"
    assert labels[USER_LABEL] == label_value("user@x")
    assert labels[FLOW_LABEL] == label_value("f:1")
    assert labels[NODE_LABEL] == "a"
    assert labels[DEPLOYMENT_LABEL] == deployment["metadata"]["name"]
    annotations = deployment["metadata"]["annotations"]
    assert annotations["orchestrator.openintegrationhub.org/flow-id"] == "f:1"
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(
        template_labels[k] == v for k, v in deployment["spec"]["selector"]["matchLabels"].items()
    )


def test_every_manifest_passes_api_validation() -> None:
    state = flow_desired_state(
        flow([node("a", 2), node("b:x")]), {"c": component()}, LIMITS, WORKER
    )
    for manifest in state.manifests:
        kind = {
            "Deployment": "deployments",
            "Secret": "secrets",
            "NetworkPolicy": "networkpolicies",
        }[manifest["kind"]]
        name = manifest["metadata"]["name"]
        assert _validate(kind, manifest, "flows", name) == []


# ---- step environment ------------------------------------------------------------------------
def test_step_environment_contract() -> None:
    doc = flow([node("a", fields={"url": "http://x", "n": 1})], flow_id="f1")
    state = flow_desired_state(
        doc, {"c": component(entrypoint="examples.components.source")}, LIMITS, WORKER
    )
    secret = next(m for m in state.manifests if m["kind"] == "Secret")
    env = secret_environment(secret)
    assert env == {
        "FLOW_ID": "f1",
        "STEP_ID": "a",
        "TENANT": "acme",
        "USER": "u1",
        "COMPONENT_ID": "c",
        "COMPONENT_FUNCTION": "run",
        "COMPONENT_ENTRYPOINT": "examples.components.source",
        "STEP_FIELDS": json.dumps({"n": 1, "url": "http://x"}, separators=(",", ":")),
        "STEP_QUEUE": keys.step_queue("f1", "a"),
        "QUEUE_BACKEND": "redis",
        "K_SINK": "http://sink",
    }
    container = state.deployments()[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert container["command"] == ["python", "-m", "shared.worker"]


def test_flow_token_is_outside_the_hash_and_only_in_the_secret() -> None:
    state = flow_desired_state(flow(), {"c": component()}, LIMITS, WORKER)
    with_token = [with_flow_token(m, "tok-123") for m in state.manifests]
    assert desired_hash(with_token) == state.hash
    secret = next(m for m in with_token if m["kind"] == "Secret")
    assert secret_environment(secret)["FLOW_TOKEN"] == "tok-123"
    assert "tok-123" not in json.dumps(state.manifests)
    assert all(m == with_flow_token(m, "") for m in state.manifests)


# ---- replicas --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("node_replicas", "descriptor", "expected"),
    [
        pytest.param(3, None, 3, id="nodeSettings.replicas wins"),
        pytest.param(None, 2, 2, id="else the descriptor"),
        pytest.param(None, None, 1, id="else one"),
        pytest.param(4, 2, 4, id="nodeSettings over descriptor"),
        pytest.param(0, 2, 0, id="an explicit zero stays zero"),
        pytest.param(9, None, 5, id="clamped to max_replicas_per_step"),
    ],
)
def test_replicas_of_a_step(
    node_replicas: int | None, descriptor: int | None, expected: int
) -> None:
    state = flow_desired_state(
        flow([node("a", node_replicas)]), {"c": component(replicas=descriptor)}, LIMITS, WORKER
    )
    assert state.replicas == {"a": expected}
    assert state.deployments()[0]["spec"]["replicas"] == expected
    assert state.clamped == (("a",) if expected < (node_replicas or 0) else ())


def test_tenant_total_clamps_the_largest_steps_first() -> None:
    limits = replace(LIMITS, max_replicas_per_step=10, max_replicas=6)
    state = flow_desired_state(
        flow([node("a", 5), node("b", 2), node("c", 1)]), {"c": component()}, limits, WORKER
    )
    assert state.replicas == {"a": 3, "b": 2, "c": 1}
    assert state.clamped == ("a",)


def test_replicas_elsewhere_count_against_the_tenant_total() -> None:
    limits = replace(LIMITS, max_replicas=4)
    state = flow_desired_state(
        flow([node("a", 3)]), {"c": component()}, limits, WORKER, replicas_elsewhere=2
    )
    assert state.replicas == {"a": 2} and state.clamped == ("a",)
    with pytest.raises(ReplicaBudgetExceeded):
        flow_desired_state(
            flow([node("a", 3)]), {"c": component()}, limits, WORKER, replicas_elsewhere=4
        )


@given(
    wanted=st.dictionaries(
        st.text("abcdef", min_size=1, max_size=3), st.integers(0, 20), min_size=1
    ),
    per_step=st.integers(1, 10),
    budget=st.integers(0, 60),
)
@settings(max_examples=300, deadline=None)
def test_clamp_replicas_properties(wanted: dict[str, int], per_step: int, budget: int) -> None:
    try:
        replicas, clamped = clamp_replicas(wanted, per_step, budget)
    except ReplicaBudgetExceeded:
        assert sum(1 for n in wanted.values() if n > 0) > budget
        return
    assert sum(replicas.values()) <= budget
    for name, n in replicas.items():
        assert min(1, wanted[name]) <= n <= min(wanted[name], per_step)
    assert set(clamped) == {name for name in wanted if replicas[name] < wanted[name]}
    if sum(min(n, per_step) for n in wanted.values()) <= budget:
        assert replicas == {k: min(v, per_step) for k, v in wanted.items()}


# ---- resources -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            ResourceSpec(),
            {
                "requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            id="tenant defaults when the descriptor is silent",
        ),
        pytest.param(
            ResourceSpec("50m", "200m", "32Mi", "128Mi"),
            {
                "requests": {"cpu": "50m", "memory": "32Mi"},
                "limits": {"cpu": "200m", "memory": "128Mi"},
            },
            id="the descriptor within the limits",
        ),
        pytest.param(
            ResourceSpec("2", "4", "1Gi", "2Gi"),
            {
                "requests": {"cpu": "500m", "memory": "256Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            id="clamped to the tenant limits",
        ),
        pytest.param(
            ResourceSpec(cpu_limit="50m", memory_limit="32Mi"),
            {
                "requests": {"cpu": "50m", "memory": "32Mi"},
                "limits": {"cpu": "50m", "memory": "32Mi"},
            },
            id="a request never above its limit",
        ),
    ],
)
def test_resources(spec: ResourceSpec, expected: dict[str, dict[str, str]]) -> None:
    assert clamp_resources(component(resources=spec), LIMITS) == expected


def test_tenant_resources_from_the_policy() -> None:
    limits = replace(LIMITS, cpu=Resources("10m", "20m"), memory=Resources("1Mi", "2Mi"))
    assert clamp_resources(component(), limits)["limits"] == {"cpu": "20m", "memory": "2Mi"}


def test_bad_quantity_is_an_invalid_component() -> None:
    with pytest.raises(ComponentInvalid):
        clamp_resources(component(resources=ResourceSpec(cpu_limit="lots")), LIMITS)


def test_component_without_image_is_invalid() -> None:
    with pytest.raises(ComponentInvalid):
        flow_desired_state(flow(), {"c": Component(id="c", name="c", image="")}, LIMITS, WORKER)


# ---- suspension and hashing ------------------------------------------------------------------
def test_suspension_is_zero_replicas_and_part_of_the_hash() -> None:
    components = {"c": component()}
    running = flow_desired_state(flow([node("a", 3)]), components, LIMITS, WORKER)
    down = flow_desired_state(flow([node("a", 3)]), components, LIMITS, WORKER, suspended=True)
    assert down.replicas == {"a": 0}
    assert down.deployments()[0]["spec"]["replicas"] == 0
    assert down.hash != running.hash
    assert suspended(running.manifests) == down.manifests
    assert desired_hash(suspended(running.manifests)) == down.hash


def test_hash_is_stable_and_changes_with_the_flow() -> None:
    components = {"c": component()}
    one = flow_desired_state(flow([node("a"), node("b")]), components, LIMITS, WORKER)
    again = flow_desired_state(flow([node("b"), node("a")]), components, LIMITS, WORKER)
    changed = flow_desired_state(
        flow([node("a"), node("b", fields={"x": 1})]), components, LIMITS, WORKER
    )
    assert one.hash == again.hash
    assert changed.hash != one.hash
    # a changed flow updates the same objects
    assert {m["metadata"]["name"] for m in changed.manifests} == {
        m["metadata"]["name"] for m in one.manifests
    }


def test_global_component() -> None:
    logger = component("logger", is_global=True, replicas=2)
    state = component_desired_state(logger, LIMITS, WORKER)
    assert [m["metadata"]["name"] for m in state.manifests] == [global_name("logger")] * 3
    assert global_name("logger").startswith("global-logger-")
    assert state.replicas == {"logger": 2}
    assert FLOW_LABEL not in state.deployments()[0]["metadata"]["labels"]
    with pytest.raises(PermanentError):
        component_desired_state(component("plain"), LIMITS, WORKER)


def test_component_variables_and_pull_policy_reach_the_step() -> None:
    crm = component(image_pull_policy="IfNotPresent", environment={"API_BASE": "https://x"})
    for state in (
        flow_desired_state(flow(), {"c": crm}, LIMITS, WORKER),
        component_desired_state(replace(crm, is_global=True), LIMITS, WORKER),
    ):
        secret = next(m for m in state.manifests if m["kind"] == "Secret")
        assert secret_environment(secret)["API_BASE"] == "https://x"
        container = state.deployments()[0]["spec"]["template"]["spec"]["containers"][0]
        assert container["imagePullPolicy"] == "IfNotPresent"
        deployment = state.deployments()[0]
        assert _validate("deployments", deployment, "flows", deployment["metadata"]["name"]) == []
    plain = flow_desired_state(flow(), {"c": component()}, LIMITS, WORKER)
    container = plain.deployments()[0]["spec"]["template"]["spec"]["containers"][0]
    assert "imagePullPolicy" not in container  # unset: Kubernetes' default, hash unchanged


@pytest.mark.parametrize("name", ["FLOW_ID", "STEP_QUEUE", "FLOW_TOKEN", "REDIS_URL", "K_SINK"])
def test_a_component_variable_never_replaces_ours(name: str) -> None:
    hostile = component(environment={name: "mine", "OK": "1"})
    with pytest.raises(ComponentInvalid) as caught:
        flow_desired_state(flow(), {"c": hostile}, LIMITS, WORKER)
    assert caught.value.problems == (f"descriptor.environment.variables.{name}: reserved",)
