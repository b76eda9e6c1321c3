"""A fake Kubernetes API server over real HTTP, for the real `kubernetes` client.

What it serves (enough for the deploy function and the metrics reader):
- discovery: /api, /apis, /api/v1, /apis/apps/v1, /apis/metrics.k8s.io/v1beta1
- apps/v1 Deployments, v1 Secrets and networking.k8s.io/v1 NetworkPolicies: server-side apply
  (PATCH application/apply-patch+yaml, `fieldManager` required, create if absent), POST
  create, GET, list by `labelSelector` (with `limit` / `continue` paging), DELETE
- v1 Pods (list only): synthesized from the Deployments, `replicas` pods each, ready or not
  as the test says, with an optional last error (waiting reason / terminated message)
- metrics.k8s.io/v1beta1 PodMetrics (list only): usage the test sets per Deployment

Tests steer it: `set_ready`, `auto_ready`, `set_pod_error`, `set_usage`, and inject faults
per verb and kind (`fail`: 409 / 422 / 500 ... and/or a delay), or at random (`flaky`: a share
of all requests 500 / 409 / timed out). Every request is logged so a
test can count writes. Production code never imports this module.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import ipaddress
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
WRITE_VERBS = ("apply", "create", "delete")
KINDS = (
    "deployments",
    "secrets",
    "networkpolicies",
    "serviceaccounts",
    "services",
    "pods",
    "podmetrics",
)

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?")

# (group path prefix, kind) for every path the fake understands.
_ROUTES = (
    (re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments(?:/([^/]+))?$"), "deployments"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$"), "secrets"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/services(?:/([^/]+))?$"), "services"),
    (
        re.compile(
            r"^/apis/networking\.k8s\.io/v1/namespaces/([^/]+)/networkpolicies(?:/([^/]+))?$"
        ),
        "networkpolicies",
    ),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/serviceaccounts(?:/([^/]+))?$"), "serviceaccounts"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?$"), "pods"),
    (
        re.compile(r"^/apis/metrics\.k8s\.io/v1beta1/namespaces/([^/]+)/pods(?:/([^/]+))?$"),
        "podmetrics",
    ),
)

_TYPE_META = {
    "deployments": ("apps/v1", "Deployment"),
    "secrets": ("v1", "Secret"),
    "services": ("v1", "Service"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
    "serviceaccounts": ("v1", "ServiceAccount"),
    "pods": ("v1", "Pod"),
    "podmetrics": ("metrics.k8s.io/v1beta1", "PodMetrics"),
}


def _resource(
    name: str, kind: str, namespaced: bool = True, verbs: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {
        "name": name,
        "singularName": kind.lower(),
        "namespaced": namespaced,
        "kind": kind,
        "verbs": list(verbs or ("create", "delete", "get", "list", "patch", "update")),
    }


_DISCOVERY: dict[str, dict[str, Any]] = {
    "/api": {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    },
    "/apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": group,
                "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
            }
            for group, version in (
                ("apps", "v1"),
                ("networking.k8s.io", "v1"),
                ("metrics.k8s.io", "v1beta1"),
            )
        ],
    },
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            _resource("secrets", "Secret"),
            _resource("serviceaccounts", "ServiceAccount"),
            _resource("services", "Service"),
            _resource("pods", "Pod", verbs=("get", "list")),
            _resource("namespaces", "Namespace", namespaced=False),
        ],
    },
    "/apis/apps/v1": {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "apps/v1",
        "resources": [_resource("deployments", "Deployment")],
    },
    "/apis/networking.k8s.io/v1": {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "networking.k8s.io/v1",
        "resources": [_resource("networkpolicies", "NetworkPolicy")],
    },
    "/apis/metrics.k8s.io/v1beta1": {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "metrics.k8s.io/v1beta1",
        "resources": [_resource("pods", "PodMetrics", verbs=("get", "list"))],
    },
}


@dataclass
class Fault:
    """Answer the next `times` matching requests with `status` after `delay`.

    `status` None serves the request normally (only slow)."""

    verb: str
    kind: str
    status: int | None
    times: int
    delay: float = 0.0
    name: str | None = None
    message: str = "injected fault"

    def matches(self, verb: str, kind: str, name: str | None) -> bool:
        return (
            self.times > 0
            and self.verb in ("*", verb)
            and self.kind in ("*", kind)
            and (self.name is None or self.name == name)
        )


@dataclass
class Flaky:
    """Fail a share `rate` of the requests on deployments, secrets and pods, drawn from a seeded
    generator: a third each answered 500, answered 409 Conflict, and timed out (held `hang`
    seconds, longer than the client waits, then served: the write may have happened)."""

    rate: float
    rng: random.Random
    hang: float
    injected: dict[str, int] = field(default_factory=lambda: {"500": 0, "409": 0, "timeout": 0})

    def draw(self) -> str | None:
        if self.rng.random() >= self.rate:
            return None
        fault = self.rng.choice(("500", "409", "timeout"))
        self.injected[fault] += 1
        return fault


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    verb: str
    kind: str
    namespace: str | None
    name: str | None
    status: int
    field_manager: str | None = None
    content_type: str | None = None
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class _PodState:
    ready: int | None = None  # None: follow auto_ready
    error_reason: str | None = None
    error_message: str | None = None
    error_state: str = "waiting"  # waiting | terminated
    cpu: str = "0"
    memory: str = "0"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def parse_label_selector(selector: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """`a=b,c!=d,e,!f,g in (x,y),h notin (z)` → [(key, op, values)]."""
    terms: list[tuple[str, str, tuple[str, ...]]] = []
    parts = re.findall(r"(?:[^,(]|\([^)]*\))+", selector)
    for raw in parts:
        term = raw.strip()
        if not term:
            continue
        match = re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term)
        if match:
            values = tuple(v.strip() for v in match.group(3).split(",") if v.strip())
            terms.append((match.group(1), match.group(2), values))
        elif "!=" in term:
            key, value = term.split("!=", 1)
            terms.append((key.strip(), "!=", (value.strip(),)))
        elif "==" in term:
            key, value = term.split("==", 1)
            terms.append((key.strip(), "=", (value.strip(),)))
        elif "=" in term:
            key, value = term.split("=", 1)
            terms.append((key.strip(), "=", (value.strip(),)))
        elif term.startswith("!"):
            terms.append((term[1:].strip(), "!exists", ()))
        else:
            terms.append((term, "exists", ()))
    return terms


def selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    for key, op, values in parse_label_selector(selector):
        present = key in labels
        value = labels.get(key)
        if op == "=" and value != values[0]:
            return False
        if op == "!=" and value == values[0]:
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
        if op == "in" and value not in values:
            return False
        if op == "notin" and value in values:
            return False
    return True


def _validate(kind: str, obj: dict[str, Any], namespace: str, name: str) -> list[str]:
    """What the real API server would refuse with 422 (a useful subset)."""
    problems: list[str] = []
    api_version, type_kind = _TYPE_META[kind]
    if obj.get("apiVersion") != api_version:
        problems.append(f"apiVersion: must be {api_version}")
    if obj.get("kind") != type_kind:
        problems.append(f"kind: must be {type_kind}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [*problems, "metadata: required"]
    if meta.get("name") != name:
        problems.append("metadata.name: does not match the name in the URL")
    if meta.get("namespace") not in (None, namespace):
        problems.append("metadata.namespace: does not match the namespace in the URL")
    if not _DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
        problems.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    if kind == "deployments" and (len(name) > 63 or "." in name):
        # Pod names derive from it; kubectl and the API refuse longer ones for pods' hostnames.
        problems.append(f"metadata.name: {name!r} must be a DNS-1123 label (≤ 63 chars)")
    for where, labels in (("metadata.labels", meta.get("labels") or {}),):
        problems.extend(_label_problems(where, labels))
    if kind == "deployments":
        problems.extend(_deployment_problems(obj.get("spec")))
    if kind == "networkpolicies":
        problems.extend(_network_policy_problems(obj.get("spec")))
    if kind == "secrets":
        data = obj.get("data") or {}
        if not isinstance(data, dict):
            problems.append("data: must be a map")
        else:
            for key, value in data.items():
                if not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
                    problems.append(f"data[{key}]: invalid key")
                try:
                    base64.b64decode(str(value), validate=True)
                except (binascii.Error, ValueError):
                    problems.append(f"data[{key}]: not base64")
    return problems


def _label_problems(where: str, labels: Any) -> list[str]:
    if not isinstance(labels, dict):
        return [f"{where}: must be a map"]
    problems = []
    for key, value in labels.items():
        name = str(key).split("/")[-1]
        if not _LABEL_NAME.fullmatch(name) or len(name) > 63:
            problems.append(f"{where}[{key}]: invalid label key")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            problems.append(f"{where}[{key}]: invalid label value {value!r}")
    return problems


def _deployment_problems(spec: Any) -> list[str]:
    if not isinstance(spec, dict):
        return ["spec: required"]
    problems = []
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        problems.append("spec.replicas: must be a non-negative integer")
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    template = spec.get("template") or {}
    template_labels = (template.get("metadata") or {}).get("labels") or {}
    problems.extend(_label_problems("spec.template.metadata.labels", template_labels))
    if not selector:
        problems.append("spec.selector: required")
    elif any(template_labels.get(k) != v for k, v in selector.items()):
        problems.append("spec.template.metadata.labels: does not match spec.selector")
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        problems.append("spec.template.spec.containers: required")
    for i, container in enumerate(containers):
        if not container.get("name"):
            problems.append(f"spec.template.spec.containers[{i}].name: required")
        if not container.get("image"):
            problems.append(f"spec.template.spec.containers[{i}].image: required")
        resources = container.get("resources") or {}
        for part in ("requests", "limits"):
            for res, qty in (resources.get(part) or {}).items():
                if not _QUANTITY.fullmatch(str(qty)):
                    problems.append(
                        f"spec.template.spec.containers[{i}].resources.{part}.{res}: "
                        f"invalid quantity {qty!r}"
                    )
    return problems


def _network_policy_problems(spec: Any) -> list[str]:
    if not isinstance(spec, dict) or not isinstance(spec.get("podSelector"), dict):
        return ["spec.podSelector: required"]
    problems = []
    for i, rule in enumerate(spec.get("egress") or []):
        for j, peer in enumerate(rule.get("to") or []):
            block = peer.get("ipBlock")
            if block is None:
                continue
            try:
                cidr = ipaddress.ip_network(block["cidr"])
                for k, other in enumerate(block.get("except") or []):
                    if not ipaddress.ip_network(other).subnet_of(cidr):  # type: ignore[arg-type]
                        where = f"spec.egress[{i}].to[{j}].ipBlock.except[{k}]"
                        problems.append(f"{where}: not in cidr")
            except (KeyError, ValueError, TypeError):
                problems.append(f"spec.egress[{i}].to[{j}].ipBlock: invalid")
    return problems


def _content(kind: str, obj: dict[str, Any]) -> Any:
    """The part of an object a client writes; a no-op apply leaves it unchanged."""
    meta = obj.get("metadata") or {}
    return json.dumps(
        {
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
            "spec": obj.get("spec"),
            "data": obj.get("data"),
            "type": obj.get("type"),
        },
        sort_keys=True,
    )


class FakeKubeApi:
    """The fake server. Start with `start()`; `url` is what the client's host is set to."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._pods: dict[str, _PodState] = {}
        self._faults: list[Fault] = []
        self._resource_version = 1000
        self._uid = 0
        self.requests: list[LoggedRequest] = []
        self.auto_ready = False
        self._token_epoch = 0
        self._flaky: Flaky | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeKubeApi:
        fake = self

        class Handler(_Handler):
            api = fake

        self._server = QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig naming this server (namespace `flows`), for a function started with
        KUBECONFIG; returns `path`."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
            f"clusters: [{{name: fake, cluster: {{server: '{self.url}'}}}}]\n"
            "users: [{name: fake, user: {token: fake-token}}]\n"
            "contexts: [{name: fake, context: {cluster: fake, user: fake, namespace: flows}}]\n"
        )
        return path

    # ---- test controls -----------------------------------------------------------------------
    def set_ready(self, name: str, ready: int | None) -> None:
        """Ready replicas of Deployment `name` (None: back to auto_ready)."""
        with self._lock:
            self._pods.setdefault(name, _PodState()).ready = ready

    def set_pod_error(
        self, name: str, reason: str, message: str = "", state: str = "waiting"
    ) -> None:
        """The not-ready pods of Deployment `name` report this last error."""
        with self._lock:
            pods = self._pods.setdefault(name, _PodState())
            pods.error_reason, pods.error_message, pods.error_state = reason, message, state

    def set_usage(self, name: str, cpu: str, memory: str) -> None:
        """Every pod of Deployment `name` reports this usage in metrics.k8s.io."""
        with self._lock:
            pods = self._pods.setdefault(name, _PodState())
            pods.cpu, pods.memory = cpu, memory

    def fail(
        self,
        verb: str = "*",
        kind: str = "*",
        status: int | None = 500,
        *,
        times: int = 1,
        delay: float = 0.0,
        name: str | None = None,
        message: str = "injected fault",
    ) -> Fault:
        """Inject a fault: verb in get/list/apply/create/delete/* and kind in KINDS or *."""
        fault = Fault(verb, kind, status, times, delay, name, message)
        with self._lock:
            self._faults.append(fault)
        return fault

    def flaky(self, rate: float, *, seed: int = 0, hang: float = 1.5) -> Flaky:
        """From now on fail `rate` of the requests at random (500 / 409 / timeout, `Flaky`);
        `flaky(0)` stops it. Returns the counter of injected faults."""
        flaky = Flaky(rate, random.Random(seed), hang)
        with self._lock:
            self._flaky = flaky if rate > 0 else None
        return flaky

    def clear_faults(self) -> None:
        with self._lock:
            self._flaky = None
            self._faults.clear()

    def put(self, obj: dict[str, Any], namespace: str = "flows") -> dict[str, Any]:
        """Store an object directly (e.g. someone else's, unlabelled) without logging a request."""
        kind = {
            "Deployment": "deployments",
            "Secret": "secrets",
            "NetworkPolicy": "networkpolicies",
            "ServiceAccount": "serviceaccounts",
            "Service": "services",
        }[obj["kind"]]
        with self._lock:
            return self._store(kind, namespace, obj["metadata"]["name"], copy.deepcopy(obj))

    def remove(self, kind: str, name: str, namespace: str = "flows") -> bool:
        """Delete an object directly (drift made by someone else)."""
        with self._lock:
            return self._objects.pop((kind, namespace, name), None) is not None

    def scale(self, name: str, replicas: int, namespace: str = "flows") -> None:
        """Someone else scales a Deployment (drift)."""
        with self._lock:
            obj = self._objects[("deployments", namespace, name)]
            obj["spec"]["replicas"] = replicas
            self._bump(obj, spec_changed=True)

    def get(self, kind: str, name: str, namespace: str = "flows") -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get((kind, namespace, name))
            return self._view(kind, obj) if obj is not None else None

    def objects(
        self, kind: str, selector: str | None = None, namespace: str = "flows"
    ) -> list[dict[str, Any]]:
        with self._lock:
            return [
                self._view(kind, obj)
                for (k, ns, _), obj in sorted(self._objects.items())
                if k == kind
                and ns == namespace
                and selector_matches(selector, obj["metadata"].get("labels") or {})
            ]

    def names(self, kind: str, selector: str | None = None, namespace: str = "flows") -> set[str]:
        return {obj["metadata"]["name"] for obj in self.objects(kind, selector, namespace)}

    def count(
        self,
        verb: str | None = None,
        kind: str | None = None,
        *,
        name: str | None = None,
        ok: bool | None = True,
    ) -> int:
        """Requests logged; `ok=True` only successful ones, None all attempts."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (verb is None or r.verb == verb)
                and (kind is None or r.kind == kind)
                and (name is None or r.name == name)
                and (ok is None or (200 <= r.status < 300) == ok)
            )

    def writes(self, kind: str | None = None, *, ok: bool | None = True) -> int:
        return sum(self.count(verb, kind, ok=ok) for verb in WRITE_VERBS)

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- the API -----------------------------------------------------------------------------
    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        content_type: str | None,
        body: bytes,
    ) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path in _DISCOVERY:
            return 200, _DISCOVERY[path]
        if method == "GET" and path == "/version":
            return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake"}
        for pattern, route_kind in _ROUTES:
            match = pattern.match(path)
            if match:
                kind, namespace, name = route_kind, match.group(1), match.group(2)
                break
        else:
            return _status(404, "NotFound", f"the server could not find {path}")
        verb = _verb(method, name, content_type)
        status, payload = 500, dict[str, Any]()
        try:
            self._maybe_fault(verb, kind, name)
            status, payload = self._dispatch(verb, kind, namespace, name, query, body)
        except ApiError as exc:
            status, payload = _status(exc.status, exc.reason, exc.message)
        finally:
            with self._lock:
                self.requests.append(
                    LoggedRequest(
                        method,
                        verb,
                        kind,
                        namespace,
                        name,
                        status,
                        query.get("fieldManager"),
                        content_type,
                        dict(query),
                    )
                )
        return status, payload

    def _maybe_fault(self, verb: str, kind: str, name: str | None) -> None:
        with self._lock:
            fault = next((f for f in self._faults if f.matches(verb, kind, name)), None)
            if fault is not None:
                fault.times -= 1
            flaky = self._flaky if fault is None and kind != "podmetrics" else None
            drawn = flaky.draw() if flaky is not None else None
        if flaky is not None and drawn == "timeout":
            time.sleep(flaky.hang)  # the client has given up; the request is still served
        elif drawn is not None:
            status = 409 if drawn == "409" else 500
            raise ApiError(status, "Conflict" if status == 409 else "InternalError", drawn)
        if fault is None:
            return
        if fault.delay:
            time.sleep(fault.delay)
        if fault.status is not None:
            reason = {409: "Conflict", 422: "Invalid", 404: "NotFound", 429: "TooManyRequests"}
            raise ApiError(fault.status, reason.get(fault.status, "InternalError"), fault.message)

    def _dispatch(
        self,
        verb: str,
        kind: str,
        namespace: str,
        name: str | None,
        query: dict[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, Any]]:
        if kind in ("pods", "podmetrics"):
            if verb != "list":
                raise ApiError(405, "MethodNotAllowed", f"{verb} of {kind} is not served")
            return 200, self._list_pods(kind, namespace, query.get("labelSelector"))
        if verb == "list":
            items = self.objects(kind, query.get("labelSelector"), namespace)
            api_version, type_kind = _TYPE_META[kind]
            metadata: dict[str, Any] = {"resourceVersion": str(self._resource_version)}
            items, metadata["continue"] = self._page(items, query)
            return 200, {
                "apiVersion": api_version,
                "kind": f"{type_kind}List",
                "metadata": metadata,
                "items": items,
            }
        assert name is not None or verb == "create"
        if verb == "get":
            obj = self.get(kind, str(name), namespace)
            if obj is None:
                raise ApiError(404, "NotFound", f'{kind} "{name}" not found')
            return 200, obj
        if verb == "delete":
            with self._lock:
                obj = self._objects.pop((kind, namespace, str(name)), None)
            if obj is None:
                raise ApiError(404, "NotFound", f'{kind} "{name}" not found')
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        document = _parse_body(body)
        if verb == "create":
            name = str((document.get("metadata") or {}).get("name") or "")
            return self._create(kind, namespace, name, document)
        if verb == "apply":
            if not query.get("fieldManager"):
                raise ApiError(400, "BadRequest", "fieldManager is required for apply requests")
            return self._apply(kind, namespace, str(name), document, query["fieldManager"])
        raise ApiError(415, "UnsupportedMediaType", f"{verb} is not served by the fake")

    def _page(
        self, items: list[dict[str, Any]], query: dict[str, str]
    ) -> tuple[list[dict[str, Any]], str]:
        """`limit` and `continue` as the API serves them (items by name; the token is opaque to
        the client, here the last name of the page; 410 once `expire_tokens` was called)."""
        token = query.get("continue", "")
        if token:
            try:
                epoch, after = json.loads(base64.urlsafe_b64decode(token))
            except (ValueError, binascii.Error) as exc:
                raise ApiError(400, "BadRequest", "invalid continue token") from exc
            if epoch != self._token_epoch:
                raise ApiError(410, "Expired", "the provided continue parameter is too old")
            items = [i for i in items if i["metadata"]["name"] > after]
        limit = int(query.get("limit") or 0)
        if not limit or len(items) <= limit:
            return items, ""
        items = items[:limit]
        last = [self._token_epoch, items[-1]["metadata"]["name"]]
        return items, base64.urlsafe_b64encode(json.dumps(last).encode()).decode()

    def expire_tokens(self) -> None:
        """Every continue token handed out so far is answered 410 Expired from now on."""
        with self._lock:
            self._token_epoch += 1

    def _create(
        self, kind: str, namespace: str, name: str, document: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        problems = _validate(kind, document, namespace, name)
        if problems:
            raise ApiError(422, "Invalid", "; ".join(problems))
        with self._lock:
            if (kind, namespace, name) in self._objects:
                raise ApiError(409, "AlreadyExists", f'{kind} "{name}" already exists')
            return 201, self._view(kind, self._store(kind, namespace, name, document))

    def _apply(
        self, kind: str, namespace: str, name: str, document: dict[str, Any], manager: str
    ) -> tuple[int, dict[str, Any]]:
        problems = _validate(kind, document, namespace, name)
        if problems:
            raise ApiError(422, "Invalid", "; ".join(problems))
        with self._lock:
            existing = self._objects.get((kind, namespace, name))
            if existing is None:
                obj = self._store(kind, namespace, name, document, manager)
                return 201, self._view(kind, obj)
            # One manager owns every field we write, so the applied configuration is the object.
            before = _content(kind, existing)
            spec_before = json.dumps(existing.get("spec"), sort_keys=True)
            meta = existing["metadata"]
            applied_meta = document.get("metadata") or {}
            meta["labels"] = applied_meta.get("labels") or {}
            meta["annotations"] = applied_meta.get("annotations") or {}
            for key in ("spec", "data", "type", "stringData"):
                if key in document:
                    existing[key] = copy.deepcopy(document[key])
                else:
                    existing.pop(key, None)
            _fold_string_data(existing)
            if _content(kind, existing) != before:
                spec_changed = json.dumps(existing.get("spec"), sort_keys=True) != spec_before
                self._bump(existing, spec_changed=spec_changed)
            _set_manager(existing, manager)
            return 200, self._view(kind, existing)

    def _store(
        self,
        kind: str,
        namespace: str,
        name: str,
        document: dict[str, Any],
        manager: str | None = None,
    ) -> dict[str, Any]:
        obj = copy.deepcopy(document)
        self._uid += 1
        self._resource_version += 1
        meta = obj.setdefault("metadata", {})
        meta.update(
            {
                "name": name,
                "namespace": namespace,
                "uid": f"00000000-0000-4000-8000-{self._uid:012d}",
                "resourceVersion": str(self._resource_version),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "generation": 1,
            }
        )
        _fold_string_data(obj)
        if manager:
            _set_manager(obj, manager)
        self._objects[(kind, namespace, name)] = obj
        return obj

    def _bump(self, obj: dict[str, Any], *, spec_changed: bool) -> None:
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)
        if spec_changed:
            obj["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1

    # ---- status and pods ---------------------------------------------------------------------
    def _ready(self, name: str, replicas: int) -> int:
        state = self._pods.get(name)
        if state is not None and state.ready is not None:
            return min(state.ready, replicas)
        return replicas if self.auto_ready else 0

    def _view(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        view = copy.deepcopy(obj)
        if kind == "deployments":
            replicas = int(view.get("spec", {}).get("replicas", 1))
            ready = self._ready(view["metadata"]["name"], replicas)
            status = {
                "observedGeneration": view["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
            }
            if ready:
                status["readyReplicas"] = ready
                status["availableReplicas"] = ready
            if replicas - ready:
                status["unavailableReplicas"] = replicas - ready
            view["status"] = status
        return view

    def _list_pods(self, kind: str, namespace: str, selector: str | None) -> dict[str, Any]:
        items = []
        with self._lock:
            deployments = [
                obj
                for (k, ns, _), obj in sorted(self._objects.items())
                if k == "deployments" and ns == namespace
            ]
            for dep in deployments:
                name = dep["metadata"]["name"]
                spec = dep.get("spec") or {}
                template = spec.get("template") or {}
                labels = dict((template.get("metadata") or {}).get("labels") or {})
                if not selector_matches(selector, labels):
                    continue
                replicas = int(spec.get("replicas", 1))
                ready = self._ready(name, replicas)
                state = self._pods.get(name, _PodState())
                suffix = hashlib.sha256(name.encode()).hexdigest()[:5]
                containers = [
                    c.get("name", "main") for c in template.get("spec", {}).get("containers", [])
                ] or ["main"]
                for i in range(replicas):
                    pod_name = f"{name}-{suffix}-{i}"
                    if kind == "podmetrics":
                        items.append(_pod_metrics(pod_name, namespace, labels, containers, state))
                    else:
                        items.append(
                            _pod(pod_name, namespace, labels, containers, i < ready, state)
                        )
        api_version, type_kind = _TYPE_META[kind]
        return {
            "apiVersion": api_version,
            "kind": f"{type_kind}List",
            "metadata": {"resourceVersion": str(self._resource_version)},
            "items": items,
        }


def _pod(
    name: str,
    namespace: str,
    labels: dict[str, str],
    containers: list[str],
    ready: bool,
    state: _PodState,
) -> dict[str, Any]:
    statuses = []
    for container in containers:
        status: dict[str, Any] = {
            "name": container,
            "ready": ready,
            "restartCount": 0 if ready else 3,
            "image": "image",
            "imageID": "",
        }
        if ready:
            status["state"] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        elif state.error_reason and state.error_state == "terminated":
            status["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
            status["lastState"] = {
                "terminated": {
                    "reason": state.error_reason,
                    "message": state.error_message or "",
                    "exitCode": 1,
                }
            }
        elif state.error_reason:
            status["state"] = {
                "waiting": {"reason": state.error_reason, "message": state.error_message or ""}
            }
        else:
            status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        statuses.append(status)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "status": {
            "phase": "Running" if ready else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": statuses,
        },
    }


def _pod_metrics(
    name: str, namespace: str, labels: dict[str, str], containers: list[str], state: _PodState
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "timestamp": "2026-01-01T00:00:00Z",
        "window": "30s",
        "containers": [
            {"name": c, "usage": {"cpu": state.cpu, "memory": state.memory}} for c in containers
        ],
    }


def _verb(method: str, name: str | None, content_type: str | None) -> str:
    if method == "GET":
        return "get" if name else "list"
    if method == "DELETE":
        return "delete"
    if method == "POST":
        return "create"
    if method == "PATCH" and (content_type or "").split(";")[0].strip() == APPLY_CONTENT_TYPE:
        return "apply"
    return f"{method.lower()}:{content_type}"


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        document = yaml.safe_load(body.decode() or "{}")
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ApiError(400, "BadRequest", f"body is not YAML/JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ApiError(400, "BadRequest", "body must be an object")
    return document


def _fold_string_data(obj: dict[str, Any]) -> None:
    string_data = obj.pop("stringData", None)
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _set_manager(obj: dict[str, Any], manager: str) -> None:
    obj["metadata"]["managedFields"] = [
        {
            "manager": manager,
            "operation": "Apply",
            "apiVersion": obj.get("apiVersion"),
            "time": "2026-01-01T00:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {},
        }
    ]


def _status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class QuietServer(ThreadingHTTPServer):
    """Clients that time out hang up on purpose in tests: that is not worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    api: FakeKubeApi
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.api.handle(
            self.command, parts.path, query, self.headers.get("Content-Type"), body
        )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    """A fresh fake Kubernetes API server per test."""
    fake = FakeKubeApi().start()
    try:
        yield fake
    finally:
        fake.stop()
