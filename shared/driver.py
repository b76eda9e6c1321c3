"""The one interface deploy talks to, and the explicit choice of its implementation.

Desired objects are Kubernetes manifests (plain dicts: apiVersion, kind, metadata, spec/data)
for apps/v1 Deployments and v1 Secrets. The `kubernetes` driver applies them with server-side
apply; the `local` driver (for `make run`) runs each Deployment as local worker processes.
The driver is chosen by `ORCHESTRATOR_DEPLOY_DRIVER` only, never by guessing (DESIGN §3, §7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.settings import Settings

Manifest = dict[str, Any]

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "component-orchestrator"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
LABEL_PREFIX = "orchestrator.openintegrationhub.org/"
DEPLOYMENT_LABEL = LABEL_PREFIX + "deployment"  # on pods: which Deployment they belong to
OBJECT_HASH_ANNOTATION = LABEL_PREFIX + "object-hash"  # detects drift without diffing specs


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

    def readiness(self, selector: str | None = None) -> list[Readiness]:
        """Readiness of our Deployments matching the selector, with pods' last errors."""
        ...

    def delete(self, kind: str, name: str) -> bool:
        """Delete one object; False if it was already gone."""
        ...

    def close(self) -> None: ...


def manifests_of_kind(manifests: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind]


def make_driver(settings: Settings, **options: Any) -> DeployDriver:
    """The driver `settings.deploy_driver` names. Options go to its constructor helper:
    kubernetes: host, token, request_timeout; local: command, workdir."""
    if settings.deploy_driver == "kubernetes":
        from shared.kubernetes import KubernetesDriver, make_api_client

        client = make_api_client(host=options.pop("host", None), token=options.pop("token", None))
        return KubernetesDriver(client, settings.kubernetes_namespace, **options)
    if settings.deploy_driver == "local":
        from shared.local_driver import LocalDriver

        driver: DeployDriver = LocalDriver(**options)
        return driver
    raise ValueError(f"ORCHESTRATOR_DEPLOY_DRIVER: unknown driver {settings.deploy_driver!r}")
