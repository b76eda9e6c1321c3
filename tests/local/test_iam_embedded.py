"""The embedded IAM of `make run`: its HTTP API, process mode, and `orchestrator token`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from jose import jwt

from shared.clock import SystemClock
from shared.local.embedded_iam import EmbeddedIam, print_token
from shared.runtime.auth import Authorizer
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.support.events import cloudevent

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def embedded() -> Iterator[EmbeddedIam]:
    iam = EmbeddedIam().start()
    yield iam
    iam.stop()


def test_token_endpoints_want_the_service_token(embedded: EmbeddedIam) -> None:
    for method, path in [
        ("POST", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens/introspect"),
        ("DELETE", "/api/v1/tokens/x"),
        ("GET", "/api/v1/tokens?token=x"),
    ]:
        answer = requests.request(
            method,
            embedded.url + path,
            json={},
            timeout=5,
            headers={"Authorization": "Bearer wrong"},
        )
        assert answer.status_code == 401, (method, path)
    assert requests.get(embedded.jwks_url, timeout=5).json()["keys"][0]["kty"] == "RSA"


def test_jwks_publishes_no_private_parts(embedded: EmbeddedIam) -> None:
    key = requests.get(embedded.jwks_url, timeout=5).json()["keys"][0]
    assert set(key) <= {"kty", "n", "e", "kid", "use", "alg"}


def test_print_token_gives_a_token_the_orchestrator_accepts(embedded: EmbeddedIam) -> None:
    out = io.StringIO()
    token = print_token(
        "acme", sub="dev", iam_url=embedded.url, service_token=embedded.service_token, out=out
    )
    assert out.getvalue().strip() == token
    env = embedded.env()
    settings = Settings.from_env(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "ORCHESTRATOR_KEY": TEST_KEY, **env}
    )
    auth = Authorizer(settings, SystemClock(), flow_tenant={"f1": "acme"}.get)
    principal = auth.authorize(
        cloudevent("flow.execute", {"flowId": "f1"}, authtoken=token), {"flowId": "f1"}
    )
    assert (principal.subject, principal.tenant) == ("dev", "acme")


def test_print_token_admin_and_permissions(embedded: EmbeddedIam) -> None:
    token = print_token(
        "acme",
        admin=True,
        permissions=["components.control"],
        iam_url=embedded.url,
        service_token=embedded.service_token,
        out=io.StringIO(),
    )
    claims = jwt.get_unverified_claims(token)
    assert claims["roles"] == [] and claims["permissions"] == ["all", "components.control"]


def test_print_token_with_a_wrong_service_token_fails_clearly(embedded: EmbeddedIam) -> None:
    with pytest.raises(RuntimeError, match="refused"):
        print_token("acme", iam_url=embedded.url, service_token="nope", out=io.StringIO())


def test_process_mode_prints_its_settings_and_serves() -> None:
    env = {**os.environ, "IAM_SERVICE_TOKEN": "process-mode-service-token-123"}
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.local.embedded_iam"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        settings = json.loads(process.stdout.readline())
        assert "IAM_SERVICE_TOKEN" not in settings  # the parent has it; never echoed
        assert requests.get(settings["IAM_JWKS_URL"], timeout=5).status_code == 200
        token = print_token(
            "acme",
            iam_url=settings["IAM_URL"],
            service_token="process-mode-service-token-123",
            out=io.StringIO(),
        )
        assert jwt.get_unverified_claims(token)["iss"] == settings["IAM_ISSUER"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_process_mode_refuses_to_start_without_a_service_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "IAM_SERVICE_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "shared.local.embedded_iam"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0 and "IAM_SERVICE_TOKEN" in done.stderr
