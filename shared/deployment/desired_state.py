"""What should run for a flow or a global component: pure functions, no clients
(docs/architecture.md §5).

A flow gets one Deployment, one Secret and one NetworkPolicy per node, under the names of
shared/deployment/object_names.py (64-bit hashes of the full ids; a changed flow is an update
of the same objects). Replicas come from `nodeSettings.replicas`, else the component
descriptor, else 1, clamped by the tenant's `max_replicas_per_step`, then by what is left of
its `max_replicas`; suspension makes them 0. Resources come from the descriptor within the
tenant's limits.

Pods run as a non-root user with every capability dropped, no privilege escalation, the
runtime's default seccomp profile, a read-only root filesystem (unless the policy's
`writable_root_components` names the component) and a writable emptyDir at /tmp; the
NetworkPolicy beside them (shared/deployment/network_policy.py) keeps them off the cluster's
addresses. Records a previous release wrote are upgraded by shared/deployment/upgrades.py.

The flow token and the workers' queue credentials are never part of a manifest here:
`with_secret_values` adds them at apply time, so the desired-state hash (for "never twice") and
the stored manifests never contain them. Workers never get the orchestrator's REDIS_URL
(shared/deployment/queue_credentials.py); only the credentials generation is desired state.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shared import keys
from shared.deployment import network_policy, queue_policy
from shared.deployment.object_names import (
    COMPONENT_LABEL,
    FLOW_LABEL,
    NAME_LABEL,
    NODE_LABEL,
    TENANT_LABEL,
    USER_LABEL,
    deployment_name,
    global_name,
)
from shared.deployment.worker_settings import WorkerSettings
from shared.errors import PermanentError
from shared.events import FlowDocument
from shared.model.policy import Resources, TenantLimits, cpu_millicores, memory_mib
from shared.ports import ferryman
from shared.ports.components import REST_API_PORT, Component, ComponentInvalid
from shared.ports.driver import (
    COMPONENT_ID_ANNOTATION as COMPONENT_ID_ANNOTATION,
)
from shared.ports.driver import (
    DEPLOYMENT_LABEL,
    LABEL_PREFIX,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OBJECT_HASH_ANNOTATION,
    SECRET_HASH_ANNOTATION,
    Manifest,
    label_value,
)
from shared.ports.driver import FLOW_ID_ANNOTATION as FLOW_ID_ANNOTATION
from shared.ports.driver import NODE_ID_ANNOTATION as NODE_ID_ANNOTATION

FLOW_TOKEN_KEY = "FLOW_TOKEN"
REDIS_URL_KEY = "REDIS_URL"
GENERATION_KEY = "QUEUE_CREDENTIALS_GENERATION"
STEP_QUEUE_KEY = "STEP_QUEUE"
# added at apply time, never stored
APPLY_TIME_KEYS = (FLOW_TOKEN_KEY, REDIS_URL_KEY, ferryman.AMQP_URI_VARIABLE)
CONTAINER_NAME = "step"
RUN_AS_USER = 10001  # our image's unprivileged user (Containerfile); others: any non-root id
TMP_VOLUME = "tmp"
TMP_SIZE = "64Mi"
WORKER_COMMAND = ("python", "-m", "shared.worker")  # inside our image (components with entrypoint)


TargetKind = Literal["flow", "component"]


class ReplicaBudgetExceeded(PermanentError):
    """Even one replica per step would exceed the tenant's max_replicas."""


@dataclass(frozen=True)
class DesiredState:
    """The objects of one target (a flow or a global component), without the flow token."""

    kind: TargetKind
    id: str
    manifests: tuple[Manifest, ...]
    replicas: Mapping[str, int] = field(default_factory=dict)  # node (or component) → n
    clamped: tuple[str, ...] = ()  # nodes whose replicas were lowered by tenant limits
    tenant: str = ""
    user: str = ""

    @property
    def hash(self) -> str:
        return desired_hash(self.manifests)

    @property
    def total_replicas(self) -> int:
        return sum(self.replicas.values())

    def deployments(self) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == "Deployment"]


# ---- resources and replicas ------------------------------------------------------------------
def _format_cpu(millicores: int) -> str:
    return f"{millicores}m"


def _format_memory(mib: float) -> str:
    return f"{int(mib)}Mi" if float(mib).is_integer() else f"{math.ceil(mib * 1024)}Ki"


def clamp_resources(component: Component, limits: TenantLimits) -> dict[str, dict[str, str]]:
    """Requests and limits from the descriptor, tenant defaults where it is silent, never above
    the tenant's limits, and a request never above its limit."""
    spec = component.resources
    try:
        cpu = _clamp_pair(spec.cpu_request, spec.cpu_limit, limits.cpu, cpu_millicores)
        memory = _clamp_pair(spec.memory_request, spec.memory_limit, limits.memory, memory_mib)
    except ValueError as exc:
        raise ComponentInvalid(f"component {component.id!r}: {exc}") from exc
    return {
        "requests": {"cpu": _format_cpu(int(cpu[0])), "memory": _format_memory(memory[0])},
        "limits": {"cpu": _format_cpu(int(cpu[1])), "memory": _format_memory(memory[1])},
    }


def _clamp_pair(
    request: str | None,
    limit: str | None,
    tenant: Resources,
    parse: Callable[[str], float],
) -> tuple[float, float]:
    cap = parse(tenant.limit)
    final_limit = min(parse(limit), cap) if limit is not None else cap
    wanted = parse(request) if request is not None else parse(tenant.request)
    return min(wanted, final_limit), final_limit


def wanted_replicas(node_replicas: int | None, component: Component) -> int:
    if node_replicas is not None:
        return node_replicas
    if component.replicas is not None:
        return component.replicas
    return 1


def clamp_replicas(
    wanted: Mapping[str, int], per_step: int, budget: int
) -> tuple[dict[str, int], tuple[str, ...]]:
    """Per step at most `per_step`; all together at most `budget` (what the tenant has left),
    lowering the largest first and never a step below one replica (a step asked for 0 stays 0).
    Returns the replicas and the nodes that were lowered."""
    replicas = {node: min(n, per_step) for node, n in wanted.items()}
    floor = sum(1 for n in replicas.values() if n > 0)
    if floor > budget:
        raise ReplicaBudgetExceeded(
            f"max_replicas: {floor} step(s) need at least one replica each, "
            f"but the tenant has only {max(budget, 0)} left"
        )
    while sum(replicas.values()) > budget:
        node = max(replicas, key=lambda k: (replicas[k], k))
        replicas[node] -= 1
    clamped = tuple(sorted(node for node in wanted if replicas[node] < wanted[node]))
    return replicas, clamped


# ---- manifests -------------------------------------------------------------------------------
def _secret_data(environment: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in sorted(environment.items())}


def content_hash(obj: object) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def stamp(manifest: Manifest) -> Manifest:
    """Adds the object-hash annotation (hash of everything else), for cheap drift checks."""
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations.pop(OBJECT_HASH_ANNOTATION, None)
    annotations[OBJECT_HASH_ANNOTATION] = content_hash(manifest)[:16]
    return manifest


# Names a component's own variables may not take: ours, and those a worker reads.
_RESERVED_ENVIRONMENT = frozenset(
    {*APPLY_TIME_KEYS, GENERATION_KEY, STEP_QUEUE_KEY, *WorkerSettings.NAMES}
)


def _with_component_environment(
    component: Component, environment: Mapping[str, str]
) -> dict[str, str]:
    """The component's descriptor variables beside ours; one that would replace one of ours
    makes the component invalid (named), rather than being dropped or winning."""
    taken = sorted(set(component.environment) & (_RESERVED_ENVIRONMENT | set(environment)))
    if taken:
        raise ComponentInvalid(
            f"component {component.id!r}: descriptor.environment.variables may not set "
            f"{', '.join(taken)}",
            problems=[f"descriptor.environment.variables.{name}: reserved" for name in taken],
        )
    return {**component.environment, **environment}


def _objects(
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    component: Component,
    environment: Mapping[str, str],
    replicas: int,
    resources: dict[str, dict[str, str]],
    *,
    writable_root: bool,
    egress: list[dict[str, object]],
    own_entrypoint: bool = False,
) -> tuple[Manifest, ...]:
    if not component.image:
        raise ComponentInvalid(f"component {component.id!r} has no distribution.image")
    labels = {**labels, DEPLOYMENT_LABEL: name}
    if component.rest_api:  # as the original orchestrator: the component serves HTTP
        environment = {**environment, "ENABLE_REST_API": "true"}
    data = _secret_data(_with_component_environment(component, environment))
    secret: Manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": dict(labels), "annotations": dict(annotations)},
        "type": "Opaque",
        "data": data,
    }
    container: dict[str, object] = {
        "name": CONTAINER_NAME,
        "image": component.image,
        "envFrom": [{"secretRef": {"name": name}}],
        "resources": resources,
    }
    if component.entrypoint and not own_entrypoint:
        container["command"] = list(WORKER_COMMAND)
    if component.image_pull_policy:  # only when set: other manifests (and hashes) unchanged
        container["imagePullPolicy"] = component.image_pull_policy
    deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels), "annotations": dict(annotations)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {MANAGED_BY_LABEL: MANAGED_BY, DEPLOYMENT_LABEL: name}},
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {SECRET_HASH_ANNOTATION: content_hash(data)[:16]},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "containers": [container],
                },
            },
        },
    }
    secure(deployment, writable_root=writable_root)
    policy = network_policy_for(deployment, egress)
    if component.rest_api:
        container["ports"] = [{"name": "rest-api", "containerPort": REST_API_PORT}]
        policy["spec"]["ingress"] = [{"ports": [{"protocol": "TCP", "port": REST_API_PORT}]}]
        service = _rest_api_service(name, labels, annotations)
        return stamp(policy), stamp(deployment), stamp(secret), stamp(service)
    return stamp(policy), stamp(deployment), stamp(secret)


def _rest_api_service(name: str, labels: dict[str, str], annotations: dict[str, str]) -> Manifest:
    """The ClusterIP Service of a component that declares `restAPI` (the original's
    `_generateServiceDefinition`: port 3001 to the Deployment's pods)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": dict(labels), "annotations": dict(annotations)},
        "spec": {
            "type": "ClusterIP",
            "selector": {MANAGED_BY_LABEL: MANAGED_BY, DEPLOYMENT_LABEL: name},
            "ports": [
                {
                    "name": "rest-api",
                    "protocol": "TCP",
                    "port": REST_API_PORT,
                    "targetPort": REST_API_PORT,
                }
            ],
        },
    }


def network_policy_for(deployment: Manifest, egress: list[dict[str, object]]) -> Manifest:
    """The NetworkPolicy of a Deployment's pods: same name, labels and owner annotations."""
    meta = deployment["metadata"]
    name = meta["name"]
    selector = {MANAGED_BY_LABEL: MANAGED_BY, DEPLOYMENT_LABEL: name}
    return network_policy.network_policy(
        name, dict(meta["labels"]), dict(meta["annotations"]), selector, egress
    )


def secure(deployment: Manifest, *, writable_root: bool) -> None:
    """Pod Security `restricted` and then some, in place: non-root with a fixed user, no
    capabilities, no privilege escalation, RuntimeDefault seccomp, a read-only root unless
    `writable_root`, a writable emptyDir at /tmp, no Service environment variables."""
    pod = deployment["spec"]["template"]["spec"]
    pod["enableServiceLinks"] = False
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    volumes = [v for v in pod.get("volumes") or [] if v.get("name") != TMP_VOLUME]
    pod["volumes"] = [*volumes, {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE}}]
    for container in pod["containers"]:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": not writable_root,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
        }
        mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != TMP_VOLUME]
        container["volumeMounts"] = [*mounts, {"name": TMP_VOLUME, "mountPath": "/tmp"}]


def flow_desired_state(
    flow: FlowDocument,
    components: Mapping[str, Component],
    limits: TenantLimits,
    worker: WorkerSettings,
    *,
    suspended: bool = False,
    replicas_elsewhere: int = 0,
    credentials_generation: int | None = None,
    writable_root: Collection[str] = (),
) -> DesiredState:
    """A flow's objects. `replicas_elsewhere`: the tenant's replicas in its other deployments
    (flows and what it already runs), counted against `max_replicas`. `credentials_generation`
    (None where the queue backend has no credentials) goes into each Secret, so a rotation
    rolls the pods. `writable_root`: components the policy lets keep a writable root."""
    if not flow.nodes:
        raise PermanentError("graph.nodes: must hold at least one node")
    # A node whose component is global runs in that component's one Deployment (started by
    # component.starting): no objects of the flow's own, its messages go to the global queue.
    own_nodes = [n for n in flow.nodes if not components[n.component_id].is_global]
    wanted = {n.id: wanted_replicas(n.replicas, components[n.component_id]) for n in own_nodes}
    replicas, clamped = clamp_replicas(
        wanted, limits.max_replicas_per_step, limits.max_replicas - replicas_elsewhere
    )
    base_labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        TENANT_LABEL: label_value(flow.tenant),
        USER_LABEL: label_value(flow.user),
        FLOW_LABEL: label_value(flow.id),
    }
    manifests: list[Manifest] = []
    for node in own_nodes:
        component = components[node.component_id]
        name = deployment_name(flow.id, node.id)
        labels = {
            **base_labels,
            NODE_LABEL: label_value(node.id),
            NAME_LABEL: label_value(component.id),
        }
        annotations = {
            FLOW_ID_ANNOTATION: flow.id,
            NODE_ID_ANNOTATION: node.id,
            COMPONENT_ID_ANNOTATION: component.id,
        }
        environment = {
            "FLOW_ID": flow.id,
            "STEP_ID": node.id,
            "TENANT": flow.tenant,
            "USER": flow.user,
            "COMPONENT_ID": component.id,
            "COMPONENT_FUNCTION": node.function,
            "COMPONENT_ENTRYPOINT": component.entrypoint,
            "STEP_FIELDS": json.dumps(node.fields, sort_keys=True, separators=(",", ":")),
            STEP_QUEUE_KEY: keys.step_queue(flow.id, node.id),
            **worker.environment(),
        }
        if credentials_generation is not None:
            environment[GENERATION_KEY] = str(credentials_generation)
        if worker.runs_ferryman:  # ferryman's own variables (docs/oih.md)
            environment.update(
                ferryman.step_environment(
                    flow.id, node.id, component.id, worker.ferryman_services()
                )
            )
        manifests.extend(
            _objects(
                name,
                labels,
                annotations,
                component,
                environment,
                0 if suspended else replicas[node.id],
                clamp_resources(component, limits),
                writable_root=component.id in writable_root,
                egress=worker.egress(),
                own_entrypoint=worker.runs_ferryman,
            )
        )
    if worker.queue_backend == "sqs" and worker.iam_role_prefix:
        account = _service_account(flow, base_labels, worker, manifests)
        for manifest in manifests:
            if manifest["kind"] == "Deployment":
                manifest["spec"]["template"]["spec"]["serviceAccountName"] = account["metadata"][
                    "name"
                ]
                stamp(manifest)
        manifests.insert(0, account)
    return DesiredState(
        kind="flow",
        id=flow.id,
        manifests=tuple(manifests),
        replicas={node: 0 if suspended else n for node, n in replicas.items()},
        clamped=clamped,
        tenant=flow.tenant,
        user=flow.user,
    )


IRSA_ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
IAM_POLICY_ANNOTATION = LABEL_PREFIX + "iam-policy"


def _service_account(
    flow: FlowDocument,
    labels: Mapping[str, str],
    worker: WorkerSettings,
    manifests: Sequence[Manifest],
) -> Manifest:
    """The flow's ServiceAccount for IRSA: named after its role, annotated with the role's ARN
    and the policy that role must have (queue_policy.worker_policy), for whoever creates the
    roles (an operator, or a controller such as ACK's IAM controller)."""
    prefix = worker.iam_role_prefix or ""
    try:
        partition, account_id, _ = queue_policy.parse_role_prefix(prefix)
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    if not worker.claim_check_bucket:
        raise PermanentError("CLAIM_CHECK_BUCKET: required with WORKER_IAM_ROLE_PREFIX")
    name = queue_policy.role_name(flow.id)
    document = queue_policy.worker_policy(
        flow.id,
        step_queues_of(manifests),
        region="*",
        account_id=account_id,
        bucket=worker.claim_check_bucket,
        partition=partition,
    )
    account: Manifest = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": name,
            "labels": dict(labels),
            "annotations": {
                FLOW_ID_ANNOTATION: flow.id,
                IRSA_ROLE_ANNOTATION: prefix + name,
                IAM_POLICY_ANNOTATION: json.dumps(document, sort_keys=True, separators=(",", ":")),
            },
        },
        "automountServiceAccountToken": False,  # IRSA projects its own token; no API token
    }
    return stamp(account)


def credential_id(kind: str, target_id: str) -> str:
    """Whose queue credentials a target's workers get: a flow's own, or for a global component
    `#<id>` ('#' starts no flow id, so the two never share a user)."""
    return target_id if kind == "flow" else keys.GLOBAL_QUEUE_MARK + target_id


def component_desired_state(
    component: Component,
    limits: TenantLimits,
    worker: WorkerSettings,
    *,
    writable_root: Collection[str] = (),
    credentials_generation: int | None = None,
) -> DesiredState:
    """A global component: one shared Deployment (no tenant; the default limits apply) that
    consumes the component's queue for every flow; its queue user is `credential_id`'s."""
    if not component.is_global:
        raise PermanentError(f"id: component {component.id!r} is not a global component")
    replicas, clamped = clamp_replicas(
        {component.id: wanted_replicas(None, component)},
        limits.max_replicas_per_step,
        limits.max_replicas,
    )
    name = global_name(component.id)
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: label_value(component.id),
        NAME_LABEL: label_value(component.id),
    }
    environment = {
        "COMPONENT_ID": component.id,
        "COMPONENT_FUNCTION": "",
        "COMPONENT_ENTRYPOINT": component.entrypoint,
        "GLOBAL_COMPONENT": "1",
        # every flow's messages for its nodes of this component (keys.global_step_queue)
        STEP_QUEUE_KEY: keys.global_step_queue(component.id),
        **worker.environment(),
    }
    if credentials_generation is not None:
        environment[GENERATION_KEY] = str(credentials_generation)
    manifests = _objects(
        name,
        labels,
        {COMPONENT_ID_ANNOTATION: component.id},
        component,
        environment,
        replicas[component.id],
        clamp_resources(component, limits),
        writable_root=component.id in writable_root,
        egress=worker.egress(),
    )
    return DesiredState(
        kind="component",
        id=component.id,
        manifests=manifests,
        replicas=replicas,
        clamped=clamped,
    )


# ---- transformations and hashing -------------------------------------------------------------
def suspended(manifests: Sequence[Manifest]) -> tuple[Manifest, ...]:
    """The same objects with every Deployment at 0 replicas (re-stamped)."""
    result = []
    for manifest in manifests:
        if manifest["kind"] == "Deployment" and manifest["spec"]["replicas"] != 0:
            manifest = copy.deepcopy(manifest)
            manifest["spec"]["replicas"] = 0
            stamp(manifest)
        result.append(manifest)
    return tuple(result)


def desired_hash(manifests: Sequence[Manifest]) -> str:
    """Stable over key order and object order; never includes apply-time values."""
    stripped = [without_secret_values(m) for m in manifests]
    ordered = sorted(stripped, key=lambda m: (m["kind"], m["metadata"]["name"]))
    return content_hash(ordered)[:32]


def with_secret_values(manifest: Manifest, values: Mapping[str, str]) -> Manifest:
    """The Secret as applied: the desired one plus the apply-time values (empty ones left out)."""
    present = {k: v for k, v in values.items() if v}
    if manifest["kind"] != "Secret" or not present:
        return manifest
    result = copy.deepcopy(manifest)
    for name, value in present.items():
        result["data"][name] = base64.b64encode(value.encode()).decode()
    return result


def with_flow_token(manifest: Manifest, token: str) -> Manifest:
    """The Secret as applied: the desired one plus FLOW_TOKEN (empty tokens are left out)."""
    return with_secret_values(manifest, {FLOW_TOKEN_KEY: token})


def without_secret_values(manifest: Manifest) -> Manifest:
    data = manifest.get("data") or {}
    if manifest["kind"] != "Secret" or not any(k in data for k in APPLY_TIME_KEYS):
        return manifest
    result = copy.deepcopy(manifest)
    for name in APPLY_TIME_KEYS:
        result["data"].pop(name, None)
    return result


def _secret_value(manifest: Manifest, name: str) -> str | None:
    raw = (manifest.get("data") or {}).get(name)
    return base64.b64decode(raw).decode() if raw is not None else None


def step_queues_of(manifests: Sequence[Manifest]) -> list[str]:
    """The step queues a flow's Secrets name (what its queue user may touch)."""
    found = (_secret_value(m, STEP_QUEUE_KEY) for m in manifests if m["kind"] == "Secret")
    return sorted({q for q in found if q})


def credentials_generation_of(manifests: Sequence[Manifest]) -> int | None:
    found = [_secret_value(m, GENERATION_KEY) for m in manifests if m["kind"] == "Secret"]
    numbers = [int(v) for v in found if v is not None and v.isdigit()]
    return max(numbers) if numbers else None
