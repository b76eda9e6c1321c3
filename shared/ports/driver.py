"""The one interface deploy talks to (the deploy port); implementations live in shared.adapters.

Desired objects are Kubernetes manifests (plain dicts: apiVersion, kind, metadata, spec/data)
for apps/v1 Deployments, v1 Secrets and networking.k8s.io/v1 NetworkPolicies. The `kubernetes`
driver applies them with server-side apply; the `local` driver (for `make run`) runs each
Deployment as local worker processes. The driver is chosen by `ORCHESTRATOR_DEPLOY_DRIVER`
only, never by guessing (docs/architecture.md §2, `wiring`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.errors import PermanentError

Manifest = dict[str, Any]

MAX_NAME = 63  # Kubernetes names and label values
HASH_CHARS = 8  # label values (selectors of objects already running depend on them)
NAME_HASH_CHARS = 16  # object names: 64 bits, so no one finds another flow's name by trying
LEGACY_NAME_HASH_CHARS = 8  # object names written before 64-bit hashes (found for upgrades)
# In the order they are applied (a flow's ServiceAccount: SQS with IRSA, shared/deployment/
# queue_policy.py; a Service only for components that declare restAPI).
KINDS = ("NetworkPolicy", "ServiceAccount", "Secret", "Deployment", "Service")

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "component-orchestrator"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
LABEL_PREFIX = "orchestrator.openintegrationhub.org/"
DEPLOYMENT_LABEL = LABEL_PREFIX + "deployment"  # on pods: which Deployment they belong to
OBJECT_HASH_ANNOTATION = LABEL_PREFIX + "object-hash"  # detects drift without diffing specs
SECRET_HASH_ANNOTATION = LABEL_PREFIX + "secret-hash"
# Exact ids of the target an object belongs to (label values are sanitized and may be
# shortened; annotations are not). Nothing is ever written over an object another target owns.
FLOW_ID_ANNOTATION = LABEL_PREFIX + "flow-id"
NODE_ID_ANNOTATION = LABEL_PREFIX + "node-id"
COMPONENT_ID_ANNOTATION = LABEL_PREFIX + "component-id"
OWNER_ANNOTATIONS = (FLOW_ID_ANNOTATION, NODE_ID_ANNOTATION, COMPONENT_ID_ANNOTATION)
# The local driver sets this in each worker process so the worker exits with its parent.
PARENT_PID_VARIABLE = "ORCHESTRATOR_PARENT_PID"


class DriverRejected(PermanentError):
    """The platform refused an object (validation, bad request): retrying will not help."""


class ObjectTaken(DriverRejected):
    """An object of the wanted name exists and belongs to another target (or not to us)."""


def same_owner(manifest: Manifest, annotations: Mapping[str, str]) -> bool:
    """Whether an existing object's owner annotations are the ones this manifest carries."""
    ours = manifest["metadata"].get("annotations") or {}
    return all(ours.get(name) == annotations.get(name) for name in OWNER_ANNOTATIONS)


@dataclass(frozen=True)
class PodUsage:
    """Current usage of one running pod, as the platform's metrics report it."""

    name: str
    labels: Mapping[str, str]
    cpu_cores: float
    memory_bytes: float


@dataclass(frozen=True)
class ObservedObject:
    """One of our objects as the cluster (or the local driver) has it now."""

    kind: str  # "Deployment" | "Secret"
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    replicas: int | None = None  # Deployments: spec.replicas


@dataclass(frozen=True)
class Readiness:
    """A Deployment's readiness: every desired replica Ready, and the pods' last error if not."""

    name: str
    desired: int
    ready: int
    exists: bool = True
    up_to_date: bool = True  # the controller has seen the latest spec
    error: str | None = None

    @property
    def is_ready(self) -> bool:
        return self.exists and self.up_to_date and self.ready >= self.desired


class DeployDriver(Protocol):
    def apply(self, manifest: Manifest) -> None:
        """Create or update the object under our one field manager; idempotent."""
        ...

    def list_managed(self, selector: str | None = None) -> list[ObservedObject]:
        """Our objects (managed-by label), narrowed by an extra label selector."""
        ...

    def observe(self, kind: str, name: str) -> ObservedObject | None:
        """The object of that kind and name, whoever wrote it (None if there is none)."""
        ...

    def list_managed_page(
        self, kind: str, *, limit: int, token: str = ""
    ) -> tuple[list[ObservedObject], str]:
        """One page (at most `limit`) of our objects of one kind, and the token of the next page
        ('' after the last): deploy's tick collects garbage a page at a time."""
        ...

    def readiness(self, selector: str | None = None) -> list[Readiness]:
        """Readiness of our Deployments matching the selector, with pods' last errors."""
        ...

    def delete(self, kind: str, name: str) -> bool:
        """Delete one object; False if it was already gone."""
        ...

    def close(self) -> None: ...


def page_by_name(
    objects: Sequence[ObservedObject], kind: str, *, limit: int, token: str = ""
) -> tuple[list[ObservedObject], str]:
    """`list_managed_page` for drivers that hold their objects in memory: names in order, the
    token is the last name of the page."""
    ahead = sorted((o for o in objects if o.kind == kind and o.name > token), key=lambda o: o.name)
    taken = ahead[:limit]
    return taken, taken[-1].name if len(ahead) > limit else ""


def manifests_of_kind(manifests: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind]


def secret_environment(manifest: Manifest) -> dict[str, str]:
    """A Secret's data decoded (the local driver's process environment)."""
    data = manifest.get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def short_hash(*parts: str, chars: int = HASH_CHARS) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:chars]


def label_value(value: str) -> str:
    """A valid label value (≤ 63, [A-Za-z0-9._-], alphanumeric at both ends); values that had
    to change get a hash suffix so two different ids never share one."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", value)
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    if cleaned == value and len(value) <= MAX_NAME:
        return value
    head = cleaned[: MAX_NAME - HASH_CHARS - 1].rstrip("-._")
    return f"{head}-{short_hash(value)}" if head else short_hash(value)
