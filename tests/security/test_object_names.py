"""Attack: a flow takes over another flow's objects by their name.

Objects are named `<flow>-<node>-<hash>`; long ids are truncated, so the hash alone tells two
flows apart. With the 32-bit hash of the previous release, two flow ids whose names collide
are found in about a second (the pair below), and deploy force-applied whatever it rendered
over whatever had that name. Here, through the deploy function on the fake Kubernetes API:
names carry 64 bits, an object that belongs to another flow is never written (the flow that
wants its name fails, with a reason that does not name the owner), a 409 is never forced over
another flow's object, and objects written under the old names are renamed exactly once
(never two Deployments of one node at a time, nothing written again afterwards).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis

from shared.adapters.kubernetes import KubernetesDriver, make_api_client
from shared.clock import FakeClock
from shared.deployment import records as deploy_records
from shared.deployment.desired_state import desired_hash
from shared.deployment.object_names import (
    deployment_name,
    global_name,
    legacy_deployment_name,
    legacy_global_name,
)
from shared.ports.driver import (
    COMPONENT_ID_ANNOTATION,
    DEPLOYMENT_LABEL,
    FLOW_ID_ANNOTATION,
    NODE_ID_ANNOTATION,
    OBJECT_HASH_ANNOTATION,
    ObjectTaken,
)
from tests.deploy_harness import DeployHarness, flow_doc, step
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi
from tests.support.pod_security import restricted_violations

# Two flow ids whose names collided under the 32-bit hash (found by trying 141,516 ids).
PREFIX = "tenant-a-flow-" + "x" * 50
FLOW_A, FLOW_B = PREFIX + "95824", PREFIX + "141515"
KINDS = ("networkpolicies", "secrets", "deployments")
EVIL_IMAGE = "registry.example/evil:6.6.6"


@pytest.fixture
def deploy(
    redis: Redis, clock: FakeClock, kube_api: FakeKubeApi, component_repo: FakeComponentRepo
) -> Iterator[DeployHarness]:
    component_repo.add("comp", replicas=1)
    component_repo.add("evil", replicas=1, image=EVIL_IMAGE)
    kube_api.auto_ready = True
    harness = DeployHarness(redis, clock, kube_api, component_repo)
    yield harness
    harness.close()


def owner(kube: FakeKubeApi, kind: str, name: str) -> str | None:
    obj = kube.get(kind, name)
    return None if obj is None else obj["metadata"]["annotations"].get(FLOW_ID_ANNOTATION)


# ---- names ------------------------------------------------------------------------------------
def test_two_flows_whose_32_bit_names_collide_each_keep_their_own_objects(
    deploy: DeployHarness,
) -> None:
    assert legacy_deployment_name(FLOW_A, "step") == legacy_deployment_name(FLOW_B, "step")
    deploy.start(flow_doc(FLOW_A, [step("step")]))
    deploy.start(flow_doc(FLOW_B, [step("step", "evil")], tenant="rival"))
    name_a, name_b = deployment_name(FLOW_A, "step"), deployment_name(FLOW_B, "step")
    assert name_a != name_b
    for kind in KINDS:
        assert owner(deploy.kube, kind, name_a) == FLOW_A
        assert owner(deploy.kube, kind, name_b) == FLOW_B
    images = {
        name: deploy.kube.get("deployments", name)["spec"]["template"]["spec"]["containers"][0][  # type: ignore[index]
            "image"
        ]
        for name in (name_a, name_b)
    }
    assert images[name_b] == EVIL_IMAGE != images[name_a]
    assert len(deploy.events("flow.started")) == 2


def test_a_flow_named_like_another_flows_objects_fails_and_leaves_them_alone(
    deploy: DeployHarness,
) -> None:
    """The collision itself, whatever the hash length: flow A's objects sit under the name
    flow B renders (as after a collision), and B is started with a hostile image."""
    deploy.start(flow_doc("flow-a", [step("step")]))
    taken = deployment_name("flow-b", "step")
    for kind in KINDS:
        theirs = copy.deepcopy(deploy.kube.get(kind, deployment_name("flow-a", "step")))
        assert theirs is not None
        theirs["metadata"] = {
            key: theirs["metadata"][key] for key in ("name", "labels", "annotations")
        }
        theirs["metadata"]["name"] = taken
        deploy.kube.put(theirs)
    before = {kind: deploy.kube.get(kind, taken) for kind in KINDS}
    deploy.kube.reset_log()
    deploy.start(flow_doc("flow-b", [step("step", "evil")], tenant="rival"))
    assert {kind: deploy.kube.get(kind, taken) for kind in KINDS} == before  # not one write
    assert deploy.kube.count("apply", name=taken, ok=None) == 0
    assert deploy.kube.count("delete", name=taken, ok=None) == 0
    [failed] = deploy.events("flow.failed")
    reason = failed.data["reason"]
    assert "belongs to another flow" in reason and "was not overwritten" in reason
    assert "flow-a" not in reason  # the owner may be another tenant's: never named
    assert deploy.record("flow-b").status == "failed"  # type: ignore[union-attr]


def test_a_conflict_is_never_forced_over_another_flows_object(kube_api: FakeKubeApi) -> None:
    """The driver's own guard: a 409 on apply is forced only over an object of the same
    target (here a conflict with kubectl, over flow A's Deployment)."""
    driver = KubernetesDriver(make_api_client(host=kube_api.url), "flows", request_timeout=2.0)
    theirs = manifest("victim", FLOW_A)
    kube_api.put(theirs)
    mine = manifest("victim", FLOW_B)
    mine["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/evil:1"
    kube_api.fail("apply", "deployments", 409, name="victim", message="conflict with kubectl")
    with pytest.raises(ObjectTaken):
        driver.apply(mine)
    assert not [r for r in kube_api.requests if r.query.get("force") == "true"]
    stored = kube_api.get("deployments", "victim")
    assert stored is not None and stored["metadata"]["annotations"][FLOW_ID_ANNOTATION] == FLOW_A
    # over its own object, the same conflict is still forced (kubectl edits are undone)
    kube_api.fail("apply", "deployments", 409, name="victim", message="conflict with kubectl")
    driver.apply(theirs)
    assert [r for r in kube_api.requests if r.query.get("force") == "true"]
    driver.close()


def manifest(name: str, flow_id: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "component-orchestrator", DEPLOYMENT_LABEL: name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": dict(labels),
            "annotations": {FLOW_ID_ANNOTATION: flow_id},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "step", "image": "registry.example/comp:1"}]},
            },
        },
    }


# ---- upgrade: objects written under the old names ---------------------------------------------
def _stamp(manifest: dict[str, Any]) -> dict[str, Any]:
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations.pop(OBJECT_HASH_ANNOTATION, None)
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    annotations[OBJECT_HASH_ANNOTATION] = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return manifest


def previous_release(manifests: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """The same objects as the release before 64-bit names wrote them: 32-bit names, no
    NetworkPolicy, pods with only allowPrivilegeEscalation false."""
    old: list[dict[str, Any]] = []
    for manifest in manifests:
        if manifest["kind"] == "NetworkPolicy":
            continue
        manifest = copy.deepcopy(manifest)
        annotations = manifest["metadata"]["annotations"]
        if FLOW_ID_ANNOTATION in annotations:
            flow, node = annotations[FLOW_ID_ANNOTATION], annotations[NODE_ID_ANNOTATION]
            name = legacy_deployment_name(flow, node)
        else:
            name = legacy_global_name(annotations[COMPONENT_ID_ANNOTATION])
        manifest["metadata"]["name"] = name
        manifest["metadata"]["labels"][DEPLOYMENT_LABEL] = name
        if manifest["kind"] == "Deployment":
            spec = manifest["spec"]
            spec["selector"]["matchLabels"][DEPLOYMENT_LABEL] = name
            spec["template"]["metadata"]["labels"][DEPLOYMENT_LABEL] = name
            pod = spec["template"]["spec"]
            for key in ("securityContext", "enableServiceLinks", "volumes"):
                pod.pop(key)
            for container in pod["containers"]:
                container["envFrom"] = [{"secretRef": {"name": name}}]
                container["securityContext"] = {"allowPrivilegeEscalation": False}
                container.pop("volumeMounts")
        old.append(_stamp(manifest))
    return old


def written_the_old_way(
    deploy: DeployHarness, flow_id: str, kind: str = "flow"
) -> list[dict[str, Any]]:
    """Deploys the flow (or global component), then puts back the record and objects the
    previous release wrote."""
    if kind == "flow":
        deploy.start(flow_doc(flow_id, [step("a"), step("b")], updated=1))
    else:
        deploy.start_component(flow_id)
    record = deploy_records.load(deploy.redis, kind, flow_id)
    assert record is not None
    old = previous_release(record.manifests)
    old_hash = desired_hash(old)
    deploy_records.write(
        deploy.redis,
        replace(record, manifests=tuple(old), desired_hash=old_hash, applied_hash=old_hash),
    )
    for kind in KINDS:
        for name in deploy.kube.names(kind):
            deploy.kube.remove(kind, name)
    for manifest in old:
        deploy.kube.put(manifest)
    deploy.kube.reset_log()
    deploy.sender.events.clear()
    return old


def deployments_at_every_step(kube: FakeKubeApi, old: list[dict[str, Any]]) -> int:
    """Replays the request log: the most Deployments of one node that existed at once."""
    alive = {m["metadata"]["name"] for m in old if m["kind"] == "Deployment"}
    most = len(alive)
    for request in kube.requests:
        if request.kind != "deployments" or not 200 <= request.status < 300:
            continue
        if request.verb == "delete":
            alive.discard(str(request.name))
        elif request.verb == "apply":
            alive.add(str(request.name))
        most = max(most, len(alive))
    return most


def test_the_tick_renames_objects_of_the_previous_release_exactly_once(
    deploy: DeployHarness,
) -> None:
    old = written_the_old_way(deploy, "flow-1")
    deploy.tick()
    new = {deployment_name("flow-1", node) for node in ("a", "b")}
    for kind in KINDS:
        assert deploy.kube.names(kind) == new
    assert deployments_at_every_step(deploy.kube, old) == 2  # a node never ran twice
    record = deploy_records.load(deploy.redis, "flow", "flow-1")
    assert record is not None and record.status == "started"
    assert {m["metadata"]["name"] for m in record.manifests} == new
    for deployment in deploy.kube.objects("deployments"):  # the namespace is `restricted`
        assert restricted_violations(deployment["spec"]["template"]["spec"]) == []
    assert deploy.events("flow.failed") == [] and deploy.events("flow.started") == []
    deploy.kube.reset_log()
    deploy.tick()
    deploy.tick()
    assert deploy.kube.writes(ok=None) == 0  # never twice
    # and the same document sent again finds the upgraded objects to be what it wants
    deploy.start(flow_doc("flow-1", [step("a"), step("b")], updated=1))
    assert deploy.kube.writes(ok=None) == 0


def test_a_start_over_objects_of_the_previous_release_replaces_them_once(
    deploy: DeployHarness,
) -> None:
    old = written_the_old_way(deploy, "flow-1")
    deploy.start(flow_doc("flow-1", [step("a"), step("b")], updated=2))
    new = {deployment_name("flow-1", node) for node in ("a", "b")}
    for kind in KINDS:
        assert deploy.kube.names(kind) == new
    assert deployments_at_every_step(deploy.kube, old) == 2
    assert len(deploy.events("flow.started")) == 1
    deploy.kube.reset_log()
    deploy.tick()
    assert deploy.kube.writes(ok=None) == 0


def test_a_global_component_of_the_previous_release_is_renamed_once(
    deploy: DeployHarness,
) -> None:
    deploy.repo.add("logger", is_global=True, replicas=1)
    old = written_the_old_way(deploy, "logger", "component")
    assert {m["metadata"]["name"] for m in old} == {legacy_global_name("logger")}
    deploy.tick()
    for kind in KINDS:
        assert deploy.kube.names(kind) == {global_name("logger")}
    assert deployments_at_every_step(deploy.kube, old) == 1
    deploy.kube.reset_log()
    deploy.tick()
    assert deploy.kube.writes(ok=None) == 0
