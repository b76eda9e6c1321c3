"""What deploy needs to know of a component (the Component Repository port).

The HTTP and catalogue repositories in shared.adapters.component_repository implement it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from shared.errors import PermanentError


class ComponentNotFound(PermanentError):
    """The Component Repository does not know this component."""

    def __init__(self, component_id: str) -> None:
        super().__init__(f"component {component_id!r} not found")
        self.component_id = component_id


class ComponentInvalid(PermanentError):
    """The Component Repository answered with something that is not a usable component."""


@dataclass(frozen=True)
class ResourceSpec:
    """Kubernetes quantities; None where the component says nothing (tenant defaults apply)."""

    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None


@dataclass(frozen=True)
class Component:
    id: str
    name: str
    image: str
    is_global: bool = False
    # descriptor.restAPI: its pods serve HTTP on REST_API_PORT behind a Service of ours
    rest_api: bool = False
    replicas: int | None = None
    resources: ResourceSpec = ResourceSpec()
    entrypoint: str = ""  # python module the local step worker runs
    functions: tuple[str, ...] = ()
    image_pull_policy: str | None = None  # None: Kubernetes' default for the image's tag
    # descriptor.environment.variables: given to the step beside (never over) our own
    environment: Mapping[str, str] = field(default_factory=dict)
    # Who may use it (the Component Repository's model): `access` public or private (its
    # default), the tenant it was created in, and `owners` as (type, id) pairs.
    access: str = "private"
    tenant: str | None = None
    owners: tuple[tuple[str, str], ...] = ()

    def owned_by(self, tenant: str | None, user: str | None = None) -> bool:
        """Created in `tenant`, owned by it (an owner of type tenant) or by `user` (the flow's
        user, whom the IAM confirmed in that tenant)."""
        if tenant and self.tenant == tenant:
            return True
        return any(
            (kind == "tenant" and tenant and owner == tenant)
            or (kind == "user" and user and owner == user)
            for kind, owner in self.owners
        )

    def usable_by(self, tenant: str, user: str | None = None) -> bool:
        """A flow may use a component that is public or its tenant's own (docs/security.md)."""
        return self.access == "public" or self.owned_by(tenant, user)


# The port the original orchestrator's restAPI Service exposes (KubernetesDriver.js).
REST_API_PORT = 3001


class ComponentRepository(Protocol):
    def get(self, component_id: str) -> Component: ...
