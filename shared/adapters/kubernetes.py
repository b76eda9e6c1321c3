"""The one module that talks to Kubernetes, with the official client.

Server-side apply of Deployments, Secrets and NetworkPolicies under one field manager, get,
list by label,
delete, readiness (ready replicas and the pods' last error) and pod usage from
metrics.k8s.io. Requests go through the ApiClient's own `param_serialize` / `call_api`, so
auth, TLS and proxies are the client's; bodies and answers stay plain JSON dicts.

Errors: 409 on apply → re-applied here with `force` only once the object read back carries the
owner annotations of the manifest (another target's object is never forced: `ObjectTaken`),
then `ApplyConflict`; 5xx, 429, 408, 401/403 (credentials rotate, RBAC gets fixed) and network
failures → `TemporaryError`; other 4xx (validation) → `KubernetesRejected` (permanent).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, cast

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.utils.quantity import parse_quantity

from shared.errors import PermanentError, TemporaryError
from shared.ports.driver import (
    DEPLOYMENT_LABEL,
    MANAGED_SELECTOR,
    OBJECT_HASH_ANNOTATION,
    DriverRejected,
    Manifest,
    ObjectTaken,
    ObservedObject,
    PodUsage,
    Readiness,
    same_owner,
)
from shared.security.redact import redact_text

log = logging.getLogger(__name__)

FIELD_MANAGER = "component-orchestrator"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
CONFLICT_RETRIES = 3
# Waiting reasons that are part of a normal start, not an error worth reporting.
_BENIGN_WAITING = frozenset({"ContainerCreating", "PodInitializing"})

# The client's config loaders and quantity parser are untyped; give them their types once.
_load_incluster = cast(Callable[..., None], k8s_config.load_incluster_config)
_load_kube_config = cast(Callable[..., None], k8s_config.load_kube_config)
_parse_quantity = cast(Callable[[object], Decimal], parse_quantity)

# kind → (API prefix, plural)
RESOURCES: dict[str, tuple[str, str]] = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Secret": ("/api/v1", "secrets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Service": ("/api/v1", "services"),
}


class KubernetesRejected(DriverRejected):
    """The API refused the object (validation, bad request): retrying will not help."""


class ApplyConflict(TemporaryError):
    """Server-side apply kept conflicting; the caller retries later."""


class KubernetesConfigError(PermanentError):
    """No in-cluster service account and no usable kubeconfig."""


def make_api_client(
    *,
    host: str | None = None,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
) -> k8s.ApiClient:
    """An explicit `host` (tests, proxies); else in-cluster config inside a pod; else kubeconfig."""
    environ = os.environ if env is None else env
    configuration = k8s.Configuration()
    if host:
        configuration.host = host.rstrip("/")
        if token:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
    else:
        try:
            if environ.get("KUBERNETES_SERVICE_HOST"):
                _load_incluster(client_configuration=configuration)
            else:
                _load_kube_config(
                    config_file=environ.get("KUBECONFIG") or None,
                    client_configuration=configuration,
                )
        except (ConfigException, OSError) as exc:
            raise KubernetesConfigError(
                "KUBECONFIG: no in-cluster service account and no usable kubeconfig "
                f"({type(exc).__name__})"
            ) from exc
    return k8s.ApiClient(configuration)


def _status_message(exc: ApiException) -> str:
    """The API's own words, masked: they end up in error bodies and `flow.failed` reasons."""
    try:
        body = json.loads(exc.body or "{}")
        if isinstance(body, dict) and body.get("message"):
            return redact_text(str(body["message"]))
    except (TypeError, ValueError):
        pass
    return redact_text(str(exc.reason or f"HTTP {exc.status}"))


def _wrap(exc: ApiException, what: str) -> Exception:
    status = int(exc.status or 0)
    message = f"{what}: {status} {_status_message(exc)}"
    if status == 409:
        return ApplyConflict(message)
    if status == 0 or status in (401, 403, 408, 429) or status >= 500:
        return TemporaryError(message, retry_after=5.0)
    return KubernetesRejected(message)


class KubernetesDriver:
    """The `kubernetes` deploy driver: everything in one namespace, one field manager."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        *,
        request_timeout: float | tuple[float, float] = (5.0, 20.0),
    ) -> None:
        self._api = api_client
        self.namespace = namespace
        self._timeout = request_timeout

    def close(self) -> None:
        close = cast(Callable[[], None], self._api.close)
        close()

    # ---- HTTP --------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        what: str,
    ) -> dict[str, Any]:
        headers: dict[str, str] = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        request = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(*request, _request_timeout=self._timeout)
            data = cast(bytes, response.read())
            if not 200 <= response.status <= 299:
                raise ApiException.from_response(
                    http_resp=response, body=data.decode(errors="replace"), data=None
                )
        except ApiException as exc:
            raise _wrap(exc, what) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TemporaryError(f"{what}: {type(exc).__name__}", retry_after=5.0) from exc
        try:
            decoded = json.loads(data or b"{}")
        except ValueError as exc:
            raise TemporaryError(f"{what}: answer is not JSON") from exc
        return cast(dict[str, Any], decoded)

    def _path(self, kind: str, name: str | None = None) -> str:
        prefix, plural = RESOURCES[kind]
        path = f"{prefix}/namespaces/{self.namespace}/{plural}"
        return f"{path}/{name}" if name else path

    # ---- objects -----------------------------------------------------------------------------
    def apply(self, manifest: Manifest) -> None:
        """Server-side apply; a 409 is re-applied with force once the object is read back as
        the same target's (never over another target's object)."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": self.namespace}}
        for attempt in range(CONFLICT_RETRIES):
            query = [("fieldManager", FIELD_MANAGER)]
            if attempt:
                current = self.get(kind, name)
                annotations = ((current or {}).get("metadata") or {}).get("annotations") or {}
                if current is not None and not same_owner(manifest, annotations):
                    raise ObjectTaken(f"{kind} {name}: the name belongs to another target")
                query.append(("force", "true"))
            try:
                self._call(
                    "PATCH",
                    self._path(kind, name),
                    query=query,
                    body=body,
                    content_type=APPLY_CONTENT_TYPE,
                    what=f"apply {kind} {name}",
                )
                return
            except ApplyConflict:
                log.info("apply of %s %s conflicted (attempt %d)", kind, name, attempt + 1)
                if attempt == CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", self._path(kind, name), what=f"get {kind} {name}")
        except KubernetesRejected as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return None
            raise

    def observe(self, kind: str, name: str) -> ObservedObject | None:
        item = self.get(kind, name)
        return None if item is None else _observed(kind, item)

    def list_objects(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        answer = self._call("GET", self._path(kind), query=query, what=f"list {kind}")
        return list(answer.get("items") or [])

    def delete(self, kind: str, name: str) -> bool:
        try:
            self._call(
                "DELETE",
                self._path(kind, name),
                body={"propagationPolicy": "Background"},
                content_type="application/json",
                what=f"delete {kind} {name}",
            )
        except KubernetesRejected as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return False
            raise
        return True

    def list_managed(self, selector: str | None = None) -> list[ObservedObject]:
        full = _and(MANAGED_SELECTOR, selector)
        observed: list[ObservedObject] = []
        for kind in RESOURCES:
            observed.extend(_observed(kind, item) for item in self.list_objects(kind, full))
        return observed

    def list_managed_page(
        self, kind: str, *, limit: int, token: str = ""
    ) -> tuple[list[ObservedObject], str]:
        """The API's own paging (`limit`, `continue`); an expired token (410, the API keeps
        them for minutes) starts the list again from the beginning."""
        query = [("labelSelector", MANAGED_SELECTOR), ("limit", str(limit))]
        try:
            answer = self._call(
                "GET",
                self._path(kind),
                query=query + ([("continue", token)] if token else []),
                what=f"list {kind}",
            )
        except KubernetesRejected as exc:
            cause = exc.__cause__
            if not (token and isinstance(cause, ApiException) and cause.status == 410):
                raise
            log.info("list of %s: continue token expired, starting again", kind)
            answer = self._call("GET", self._path(kind), query=query, what=f"list {kind}")
        items = list(answer.get("items") or [])[:limit]
        next_token = str((answer.get("metadata") or {}).get("continue") or "")
        return [_observed(kind, item) for item in items], next_token

    # ---- readiness ---------------------------------------------------------------------------
    def readiness(self, selector: str | None = None) -> list[Readiness]:
        full = _and(MANAGED_SELECTOR, selector)
        deployments = self.list_objects("Deployment", full)
        lagging = any(
            int((d.get("status") or {}).get("readyReplicas") or 0)
            < int((d.get("spec") or {}).get("replicas", 1))
            for d in deployments
        )
        errors = self.pod_errors(full) if lagging else {}  # pods are read only when useful
        result = []
        for item in deployments:
            meta, spec, status = item["metadata"], item.get("spec") or {}, item.get("status") or {}
            desired = int(spec.get("replicas", 1))
            ready = int(status.get("readyReplicas") or 0)
            result.append(
                Readiness(
                    name=meta["name"],
                    desired=desired,
                    ready=ready,
                    up_to_date=int(status.get("observedGeneration") or 0)
                    >= int(meta.get("generation") or 0),
                    error=None if ready >= desired else errors.get(meta["name"]),
                )
            )
        return result

    def pod_errors(self, selector: str) -> dict[str, str]:
        """Deployment name → the last error one of its not-ready pods reports."""
        pods = self._call(
            "GET",
            f"/api/v1/namespaces/{self.namespace}/pods",
            query=[("labelSelector", selector)],
            what="list pods",
        )
        errors: dict[str, str] = {}
        for pod in pods.get("items") or []:
            owner = ((pod.get("metadata") or {}).get("labels") or {}).get(DEPLOYMENT_LABEL)
            error = pod_last_error(pod)
            if owner and error and owner not in errors:
                errors[owner] = error
        return errors

    # ---- metrics -----------------------------------------------------------------------------
    def pod_usage(self, selector: str | None = None) -> list[PodUsage]:
        """Current cpu/memory of our pods from metrics.k8s.io (metrics-server)."""
        answer = self._call(
            "GET",
            f"/apis/metrics.k8s.io/v1beta1/namespaces/{self.namespace}/pods",
            query=[("labelSelector", _and(MANAGED_SELECTOR, selector))],
            what="read pod metrics",
        )
        usage = []
        for item in answer.get("items") or []:
            cpu, memory = Decimal(0), Decimal(0)
            for container in item.get("containers") or []:
                container_usage = container.get("usage") or {}
                cpu += _parse_quantity(container_usage.get("cpu", "0"))
                memory += _parse_quantity(container_usage.get("memory", "0"))
            meta = item.get("metadata") or {}
            usage.append(
                PodUsage(
                    name=str(meta.get("name")),
                    labels=dict(meta.get("labels") or {}),
                    cpu_cores=float(cpu),
                    memory_bytes=float(memory),
                )
            )
        return usage


def _observed(kind: str, item: Mapping[str, Any]) -> ObservedObject:
    meta = item.get("metadata") or {}
    replicas = (item.get("spec") or {}).get("replicas") if kind == "Deployment" else None
    return ObservedObject(
        kind=kind,
        name=str(meta.get("name")),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        replicas=None if replicas is None else int(replicas),
    )


def pod_last_error(pod: Mapping[str, Any]) -> str | None:
    """A not-ready pod's most telling error: waiting reason, last termination, or scheduling."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        if container.get("ready"):
            continue
        waiting = (container.get("state") or {}).get("waiting") or {}
        terminated = (container.get("lastState") or {}).get("terminated") or {}
        if terminated.get("reason") or terminated.get("message"):
            detail = terminated.get("message") or f"exit code {terminated.get('exitCode')}"
            return f"{terminated.get('reason') or 'Terminated'}: {detail}".strip()
        reason = waiting.get("reason")
        if reason and reason not in _BENIGN_WAITING:
            message = waiting.get("message")
            return f"{reason}: {message}" if message else str(reason)
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason') or 'Unschedulable'}: {condition.get('message', '')}"
    return None


def object_hash(observed: ObservedObject) -> str | None:
    return observed.annotations.get(OBJECT_HASH_ANNOTATION)


def _and(*selectors: str | None) -> str:
    return ",".join(s for s in selectors if s)
