"""A function's real functions-framework app (functions/<fn>/main.py) on the test's settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytest
from flask.testing import FlaskClient
from functions_framework import create_app
from redis import Redis

from shared.clock import FakeClock
from shared.runtime import function as runtime_function
from tests.fakes.component_repo import FakeComponentRepo
from tests.fakes.kube_api import FakeKubeApi

ROOT = Path(__file__).resolve().parent.parent.parent


def function_client(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str], function: str, **extra: str
) -> FlaskClient:
    """The app as Knative starts it: settings from the environment (checked at start), no
    policy file unless the test sets one; `extra` adds variables (e.g. K_SINK)."""
    for name, value in {**env, **extra}.items():
        monkeypatch.setenv(name, value)
    if "ORCHESTRATOR_POLICY_FILE" not in {**env, **extra}:
        monkeypatch.delenv("ORCHESTRATOR_POLICY_FILE", raising=False)
    source = ROOT / "functions" / function.replace("-", "_") / "main.py"
    return app_client(source)


def app_client(source: Path) -> FlaskClient:
    """functions-framework's app for `functions/<fn>/main.py` (its `create_app` is untyped)."""
    return cast(FlaskClient, create_app(target="handle", source=str(source)).test_client())


def drop_queue_users(redis: Redis) -> None:
    """Removes deploy's per-flow queue users from the shared test server (all but `default`)."""
    for raw in redis.acl_users():
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        if name != "default":
            redis.acl_deluser(name)


@contextmanager
def deployed_functions(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis: Redis,
    clock: FakeClock,
    kube_api: FakeKubeApi,
    component_repo: FakeComponentRepo,
    env: Mapping[str, str],
) -> Iterator[Callable[[str], FlaskClient]]:
    """The functions as a cluster runs them, each app made once on first use: auth required,
    the Kubernetes driver on the fake API (through a kubeconfig), the fake Component
    Repository, work-through ticks off, the IAM checked on `clock`; `env` gives the rest (the
    base environment, the IAM's settings, K_SINK...), these win over it. Deploy's
    per-flow queue users are removed afterwards."""
    kube_api.auto_ready = True
    environment = {
        **env,
        "ORCHESTRATOR_AUTH": "required",
        "ORCHESTRATOR_DEPLOY_DRIVER": "kubernetes",
        "KUBECONFIG": str(kube_api.write_kubeconfig(tmp_path / "kubeconfig")),
        "COMPONENT_REPOSITORY_URL": component_repo.url,
        "FLOW_START_WORK_THROUGH_SECONDS": "0",
    }
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(runtime_function, "SystemClock", lambda: clock)  # the IAM's clock
    clients: dict[str, FlaskClient] = {}

    def client(function: str) -> FlaskClient:
        if function not in clients:
            clients[function] = function_client(monkeypatch, environment, function)
        return clients[function]

    try:
        yield client
    finally:
        drop_queue_users(redis)
