"""Settings (DESIGN §7): read from the environment, refused at start naming the variable."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.settings import Settings, SettingsError

KEY = "k" * 32
MINIMAL = {
    "REDIS_URL": "redis://localhost:6379/0",
    "ORCHESTRATOR_KEY": KEY,
    "ORCHESTRATOR_AUTH": "off",
}


def _settings(**changes: str | None) -> Settings:
    env = dict(MINIMAL)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return Settings.from_env(env)


def test_defaults_follow_the_design_table() -> None:
    settings = _settings()
    assert settings.deploy_driver == "kubernetes"
    assert settings.kubernetes_namespace == "flows"
    assert settings.deploy_ready_timeout == 300.0
    assert settings.queue_backend == "redis"
    assert settings.k_sink is None and settings.policy_file is None
    assert settings.component_repository_url is None
    assert not settings.auth_required


def test_auth_is_required_unless_switched_off() -> None:
    settings = _settings(ORCHESTRATOR_AUTH=None, IAM_JWKS_URL="http://iam/.well-known/jwks.json")
    assert settings.auth_required and settings.auth == "required"


def test_every_variable_is_read() -> None:
    settings = _settings(
        K_SINK="http://broker.local/ns/default",
        ORCHESTRATOR_POLICY_FILE="/etc/policy.yaml",
        ORCHESTRATOR_DEPLOY_DRIVER="local",
        KUBERNETES_NAMESPACE="tenant-flows",
        DEPLOY_READY_TIMEOUT="12.5",
        COMPONENT_REPOSITORY_URL="http://components:3000",
        IAM_JWKS_URL="http://iam/jwks",
        IAM_ISSUER="https://iam.example",
        IAM_AUDIENCE="orchestrator",
        IAM_INTROSPECT_URL="http://iam/introspect",
        IAM_URL="http://iam",
        IAM_SERVICE_TOKEN="service-token-value",
        ORCHESTRATOR_AUTH="required",
        QUEUE_BACKEND="sqs",
        AWS_ENDPOINT_URL="http://localhost:5000",
        CLAIM_CHECK_BUCKET="bodies",
    )
    assert settings.k_sink == "http://broker.local/ns/default"
    assert settings.policy_file == "/etc/policy.yaml"
    assert settings.deploy_driver == "local"
    assert settings.kubernetes_namespace == "tenant-flows"
    assert settings.deploy_ready_timeout == 12.5
    assert settings.component_repository_url == "http://components:3000"
    assert (settings.iam_jwks_url, settings.iam_issuer, settings.iam_audience) == (
        "http://iam/jwks",
        "https://iam.example",
        "orchestrator",
    )
    assert settings.iam_introspect_url == "http://iam/introspect"
    assert (settings.iam_url, settings.iam_service_token) == ("http://iam", "service-token-value")
    assert settings.queue_backend == "sqs" and settings.claim_check_bucket == "bodies"
    assert settings.aws_endpoint_url == "http://localhost:5000"


def test_flow_pods_network_settings_have_defaults_and_are_read() -> None:
    """docs/security.md, "The network": what flow pods never reach, and the hub's services."""
    settings = _settings()
    assert settings.cluster_pod_cidrs == ("10.244.0.0/16",)
    assert settings.cluster_service_cidrs == ("10.96.0.0/12",)
    assert settings.cluster_node_cidrs == ()
    assert settings.secret_service_url == "http://secret-service.oih.svc.cluster.local:3000/api/v1"
    assert settings.snapshots_service_url == "http://snapshots-service.oih.svc.cluster.local:1234"
    assert settings.attachment_storage_service_url == (
        "http://attachment-storage-service.oih.svc.cluster.local:3002"
    )
    settings = _settings(
        CLUSTER_POD_CIDRS="10.0.0.0/14, 10.8.0.1/16",
        CLUSTER_SERVICE_CIDRS="172.20.0.0/16",
        CLUSTER_NODE_CIDRS="192.168.0.0/24",
        SECRET_SERVICE_BASE_URL="http://secrets.hub.svc:3000/api/v1",
        SNAPSHOTS_SERVICE_BASE_URL="http://snapshots.hub.svc:1234",
        ATTACHMENT_STORAGE_SERVICE_BASE_URL="http://attachments.hub.svc:3002",
    )
    assert settings.cluster_pod_cidrs == ("10.0.0.0/14", "10.8.0.0/16")
    assert settings.cluster_service_cidrs == ("172.20.0.0/16",)
    assert settings.cluster_node_cidrs == ("192.168.0.0/24",)
    assert settings.secret_service_url == "http://secrets.hub.svc:3000/api/v1"
    assert settings.snapshots_service_url == "http://snapshots.hub.svc:1234"
    assert settings.attachment_storage_service_url == "http://attachments.hub.svc:3002"


@pytest.mark.parametrize(
    ("changes", "mode"),
    [
        ({}, "standalone"),
        ({"REDIS_MODE": "cluster"}, "cluster"),
        ({"REDIS_URL": "redis+sentinel://s1:26379,s2:26379/orchestrator/0"}, "sentinel"),
        ({"REDIS_URL": "rediss+sentinel://:pw@s1:26379/orchestrator"}, "sentinel"),
        ({"REDIS_URL": "redis://s1:26379", "REDIS_MODE": "sentinel"}, "sentinel"),
    ],
)
def test_the_redis_topology_is_set_or_follows_the_url(changes: dict[str, str], mode: str) -> None:
    assert _settings(**changes).redis_mode == mode


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no redis url", {"REDIS_URL": None}, "REDIS_URL: required"),
    ("redis url not a url", {"REDIS_URL": "localhost"}, "REDIS_URL: not a URL"),
    ("redis url wrong scheme", {"REDIS_URL": "http://localhost"}, "REDIS_URL: scheme"),
    (
        "replicas not a count",
        {"REDIS_WAIT_REPLICAS": "1.5"},
        "REDIS_WAIT_REPLICAS: must be a whole",
    ),
    ("unknown redis mode", {"REDIS_MODE": "ring"}, "REDIS_MODE: must be one of"),
    (
        "sentinel url, cluster mode",
        {"REDIS_URL": "redis+sentinel://s1:26379/svc", "REDIS_MODE": "cluster"},
        "REDIS_MODE: a redis+sentinel:// URL needs sentinel",
    ),
    ("no key", {"ORCHESTRATOR_KEY": None}, "ORCHESTRATOR_KEY: required"),
    ("short key", {"ORCHESTRATOR_KEY": "short"}, "ORCHESTRATOR_KEY: must be at least 32"),
    ("sink not a url", {"K_SINK": "broker"}, "K_SINK: not a URL"),
    ("unknown driver", {"ORCHESTRATOR_DEPLOY_DRIVER": "docker"}, "ORCHESTRATOR_DEPLOY_DRIVER"),
    ("unknown auth mode", {"ORCHESTRATOR_AUTH": "maybe"}, "ORCHESTRATOR_AUTH: must be one of"),
    ("auth without iam", {"ORCHESTRATOR_AUTH": "required"}, "IAM_JWKS_URL: required"),
    ("unknown queue", {"QUEUE_BACKEND": "kafka"}, "QUEUE_BACKEND: must be one of"),
    ("sqs without bucket", {"QUEUE_BACKEND": "sqs"}, "CLAIM_CHECK_BUCKET: required"),
    ("timeout not a number", {"DEPLOY_READY_TIMEOUT": "soon"}, "DEPLOY_READY_TIMEOUT"),
    ("timeout zero", {"DEPLOY_READY_TIMEOUT": "0"}, "DEPLOY_READY_TIMEOUT"),
    ("timeout negative", {"DEPLOY_READY_TIMEOUT": "-3"}, "DEPLOY_READY_TIMEOUT"),
    ("namespace not a dns label", {"KUBERNETES_NAMESPACE": "Flows_1"}, "KUBERNETES_NAMESPACE"),
    ("jwks not a url", {"IAM_JWKS_URL": "jwks.json"}, "IAM_JWKS_URL: not a URL"),
    ("iam url not a url", {"IAM_URL": "iam"}, "IAM_URL: not a URL"),
    ("repository not a url", {"COMPONENT_REPOSITORY_URL": "x"}, "COMPONENT_REPOSITORY_URL"),
    ("aws endpoint not a url", {"AWS_ENDPOINT_URL": "x"}, "AWS_ENDPOINT_URL: not a URL"),
    ("cron interval negative", {"CRON_MIN_INTERVAL_SECONDS": "-1"}, "CRON_MIN_INTERVAL_SECONDS"),
    ("pod range not a range", {"CLUSTER_POD_CIDRS": "10.244.0.0/33"}, "CLUSTER_POD_CIDRS: not an"),
    ("service range ipv6", {"CLUSTER_SERVICE_CIDRS": "fd00::/108"}, "CLUSTER_SERVICE_CIDRS: only"),
    ("node range a name", {"CLUSTER_NODE_CIDRS": "nodes"}, "CLUSTER_NODE_CIDRS: not an"),
    ("secret service not a url", {"SECRET_SERVICE_BASE_URL": "x"}, "SECRET_SERVICE_BASE_URL"),
]


@pytest.mark.parametrize(
    ("changes", "problem"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_an_invalid_setting_is_refused_naming_the_variable(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        _settings(**changes)
    assert any(problem in p for p in caught.value.problems), caught.value.problems
    assert problem.split(":")[0] in str(caught.value)


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"ORCHESTRATOR_DEPLOY_DRIVER": "docker", "QUEUE_BACKEND": "kafka"})
    named = {p.split(":")[0] for p in caught.value.problems}
    assert {"REDIS_URL", "ORCHESTRATOR_KEY", "ORCHESTRATOR_DEPLOY_DRIVER", "QUEUE_BACKEND"} <= named


def test_blank_values_count_as_unset() -> None:
    settings = _settings(K_SINK="  ", ORCHESTRATOR_POLICY_FILE="")
    assert settings.k_sink is None and settings.policy_file is None


def test_secrets_never_appear_in_repr_or_errors() -> None:
    settings = _settings(
        REDIS_URL="redis://:hunter2-password@localhost:6379/0",
        IAM_SERVICE_TOKEN="service-token-secret-value",
    )
    shown = repr(settings) + str(settings)
    for secret in (KEY, "hunter2-password", "service-token-secret-value"):
        assert secret not in shown
    with pytest.raises(SettingsError) as caught:
        _settings(ORCHESTRATOR_KEY="0123456789-too-short")
    assert "0123456789-too-short" not in str(caught.value)


@given(st.text(alphabet="abcdefghij0123456789", min_size=0, max_size=64))
def test_the_key_must_have_at_least_32_bytes(key: str) -> None:
    env = dict(MINIMAL, ORCHESTRATOR_KEY=key)
    if len(key.encode()) >= 32:
        assert Settings.from_env(env).orchestrator_key == key
    else:
        with pytest.raises(SettingsError, match="ORCHESTRATOR_KEY"):
            Settings.from_env(env)
