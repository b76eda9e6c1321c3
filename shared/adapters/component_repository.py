"""The Component Repository: what image, replicas and resources a flow step's component has.

`HttpComponentRepository` GETs `{COMPONENT_REPOSITORY_URL}/components/{id}` (the hub's shape,
`{"data": {...}}`) with a timeout and a small TTL cache; `CatalogueComponentRepository`
serves the same answers from a local JSON file for `make run`. Errors: 404 →
`ComponentNotFound` (the flow fails with that reason); a malformed component →
`ComponentInvalid`; 5xx, 429, 401/403 and network failures → `TemporaryError` (503).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from shared.clock import Clock
from shared.errors import TemporaryError
from shared.ports.components import (
    Component,
    ComponentInvalid,
    ComponentNotFound,
    ComponentRepository,
    ResourceSpec,
)
from shared.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "Component",
    "ComponentInvalid",
    "ComponentNotFound",
    "ComponentRepository",
    "ResourceSpec",
]

DEFAULT_TTL_SECONDS = 60.0
DEFAULT_TIMEOUT_SECONDS = 5.0
CACHE_SIZE = 1024
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
ACCESS = ("public", "private")
MAX_OWNERS = 256
MAX_ENVIRONMENT_VARIABLES = 256
MAX_ENVIRONMENT_VALUE_BYTES = 32 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_component(component_id: str, answer: Any) -> Component:
    """The hub's `{"data": {...}}` (or the bare object) → Component, or ComponentInvalid."""
    data = answer.get("data", answer) if isinstance(answer, Mapping) else None
    if not isinstance(data, Mapping):
        raise ComponentInvalid(f"component {component_id!r}: answer has no data object")
    problems: list[str] = []
    distribution = data.get("distribution") or {}
    if not isinstance(distribution, Mapping):
        problems.append("distribution: must be an object")
        distribution = {}
    image = distribution.get("image") or ""
    if not isinstance(image, str):
        problems.append("distribution.image: must be a string")
        image = ""
    descriptor = data.get("descriptor") or {}
    if not isinstance(descriptor, Mapping):
        problems.append("descriptor: must be an object")
        descriptor = {}
    replicas = descriptor.get("replicas")
    if replicas is not None and (
        not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0
    ):
        problems.append("descriptor.replicas: must be a non-negative integer")
        replicas = None
    entrypoint = descriptor.get("entrypoint") or ""
    if not isinstance(entrypoint, str):
        problems.append("descriptor.entrypoint: must be a string")
        entrypoint = ""
    # The hub's model keeps `resources` at the top level; the original orchestrator read it
    # there first. `descriptor.resources` (this project's earlier reading) fills the gaps.
    resource_spec = _first_of(
        _parse_resources(data.get("resources"), problems, "resources"),
        _parse_resources(descriptor.get("resources"), problems, "descriptor.resources"),
    )
    pull_policy = descriptor.get("imagePullPolicy")
    if pull_policy is not None and pull_policy not in PULL_POLICIES:
        problems.append(f"descriptor.imagePullPolicy: must be one of {', '.join(PULL_POLICIES)}")
        pull_policy = None
    environment = _parse_environment(descriptor.get("environment"), problems)
    access = data.get("access", "private")  # the repository model's default
    if access not in ACCESS:
        problems.append(f"access: must be one of {', '.join(ACCESS)}")
    owners = _parse_owners(data.get("owners"), problems)
    tenant = data.get("tenant")
    functions = _parse_functions(data.get("functions", descriptor.get("functions")))
    if problems:
        raise ComponentInvalid(f"component {component_id!r} is invalid", problems=problems)
    return Component(
        id=str(data.get("id") or data.get("_id") or component_id),
        name=str(data.get("name") or component_id),
        image=image,
        is_global=bool(data.get("isGlobal", False)),
        rest_api=bool(descriptor.get("restAPI")),
        replicas=replicas,
        resources=resource_spec,
        entrypoint=entrypoint,
        functions=functions,
        image_pull_policy=pull_policy,
        environment=environment,
        access=str(access),
        tenant=str(tenant) if tenant else None,
        owners=owners,
    )


def _parse_owners(raw: Any, problems: list[str]) -> tuple[tuple[str, str], ...]:
    """`owners: [{id, type}]` (type `user` or `tenant`, as the repository stores them)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_OWNERS:
        problems.append(f"owners: must be a list of at most {MAX_OWNERS} {{id, type}} objects")
        return ()
    owners = []
    for owner in raw:
        if isinstance(owner, Mapping) and owner.get("id") and owner.get("type"):
            owners.append((str(owner["type"]), str(owner["id"])))
    return tuple(owners)


def _first_of(first: ResourceSpec, fallback: ResourceSpec) -> ResourceSpec:
    """Quantity by quantity: `first` where it says something, else `fallback`."""
    return ResourceSpec(
        cpu_request=first.cpu_request or fallback.cpu_request,
        cpu_limit=first.cpu_limit or fallback.cpu_limit,
        memory_request=first.memory_request or fallback.memory_request,
        memory_limit=first.memory_limit or fallback.memory_limit,
    )


def _parse_environment(raw: Any, problems: list[str]) -> dict[str, str]:
    """`descriptor.environment.variables`: an object of names to scalars (as text)."""
    where = "descriptor.environment.variables"
    if raw is None:
        return {}
    variables = raw.get("variables") if isinstance(raw, Mapping) else None
    if variables is None:
        if not isinstance(raw, Mapping):
            problems.append("descriptor.environment: must be an object")
        return {}
    if not isinstance(variables, Mapping):
        problems.append(f"{where}: must be an object")
        return {}
    if len(variables) > MAX_ENVIRONMENT_VARIABLES:
        problems.append(f"{where}: more than {MAX_ENVIRONMENT_VARIABLES} variables")
        return {}
    result: dict[str, str] = {}
    for name, value in variables.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            problems.append(f"{where}: not a variable name: {str(name)[:64]!r}")
            continue
        if isinstance(value, bool):  # as JavaScript writes it into the environment
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            problems.append(f"{where}.{name}: must be a string, number or boolean")
            continue
        if len(text.encode()) > MAX_ENVIRONMENT_VALUE_BYTES:
            problems.append(f"{where}.{name}: longer than {MAX_ENVIRONMENT_VALUE_BYTES} bytes")
            continue
        result[name] = text
    return result


def _parse_resources(raw: Any, problems: list[str], where: str) -> ResourceSpec:
    """Accepts `{cpu: {request, limit}, memory: {...}}` (policy shape) or Kubernetes'
    `{requests: {cpu, memory}, limits: {...}}`."""
    if raw is None:
        return ResourceSpec()
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be an object")
        return ResourceSpec()
    values: dict[str, str | None] = {}
    for resource in ("cpu", "memory"):
        for part, k8s_part in (("request", "requests"), ("limit", "limits")):
            section = raw.get(resource)
            value = section.get(part) if isinstance(section, Mapping) else None
            if value is None and isinstance(raw.get(k8s_part), Mapping):
                value = raw[k8s_part].get(resource)
            if value is not None and not isinstance(value, str | int | float):
                problems.append(f"{where}.{resource}.{part}: must be a quantity")
                value = None
            values[f"{resource}_{part}"] = None if value is None else str(value)
    return ResourceSpec(**values)


def _parse_functions(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, Mapping):
        return tuple(str(name) for name in raw)
    if isinstance(raw, list):
        names = [f.get("name") if isinstance(f, Mapping) else f for f in raw]
        return tuple(str(n) for n in names if n)
    return ()


class _TtlCache:
    def __init__(self, clock: Clock, ttl: float, size: int = CACHE_SIZE) -> None:
        self._clock, self._ttl, self._size = clock, ttl, size
        self._entries: OrderedDict[str, tuple[float, Component]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Component | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock.now():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: str, value: Component) -> None:
        with self._lock:
            self._entries[key] = (self._clock.now() + self._ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


class HttpComponentRepository:
    def __init__(
        self,
        base_url: str,
        *,
        clock: Clock,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        service_token: str | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout_seconds
        self._token = service_token
        self._session = session or requests.Session()
        self._cache = _TtlCache(clock, ttl_seconds)

    def get(self, component_id: str) -> Component:
        cached = self._cache.get(component_id)
        if cached is not None:
            return cached
        component = self._fetch(component_id)
        self._cache.put(component_id, component)
        return component

    def _fetch(self, component_id: str) -> Component:
        url = f"{self._base}/components/{quote(component_id, safe='')}"
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._session.get(url, headers=headers, timeout=self._timeout)
        except requests.RequestException as exc:
            raise TemporaryError(
                f"Component Repository unreachable ({type(exc).__name__})", retry_after=5.0
            ) from exc
        status = response.status_code
        if status == 404:
            raise ComponentNotFound(component_id)
        if status >= 500 or status in (401, 403, 408, 429):
            raise TemporaryError(f"Component Repository answered {status}", retry_after=5.0)
        if status >= 400:
            raise ComponentInvalid(f"component {component_id!r}: repository answered {status}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise ComponentInvalid(f"component {component_id!r}: answer is not JSON") from exc
        return parse_component(component_id, answer)


class CatalogueComponentRepository:
    """Components from a JSON file `{"components": [<hub component>, ...]}` (make run)."""

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            text = resources.files("shared").joinpath("data/catalogue.json").read_text()
        else:
            text = Path(path).read_text()
        entries = json.loads(text).get("components", [])
        self._components = {
            str(entry["id"]): parse_component(str(entry["id"]), entry) for entry in entries
        }

    def get(self, component_id: str) -> Component:
        try:
            return self._components[component_id]
        except KeyError:
            raise ComponentNotFound(component_id) from None

    def ids(self) -> list[str]:
        return sorted(self._components)


def make_component_repository(settings: Settings, clock: Clock) -> ComponentRepository:
    """COMPONENT_REPOSITORY_URL when set; otherwise the built-in catalogue (README.md
    "Settings")."""
    if settings.component_repository_url:
        return HttpComponentRepository(
            settings.component_repository_url,
            clock=clock,
            service_token=settings.iam_service_token,
        )
    log.info("COMPONENT_REPOSITORY_URL is unset: serving components from the local catalogue")
    return CatalogueComponentRepository()
