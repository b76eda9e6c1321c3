"""Which in-cluster endpoint a URL names (shared/deployment/network_policy.py)."""

from __future__ import annotations

import pytest

from shared.deployment.network_policy import Endpoint, egress_rules, endpoint_of

CASES = [
    (
        "redis://:pw@redis.orchestrator.svc.cluster.local:6380/0",
        Endpoint("orchestrator", None, 6380),
    ),
    ("redis://redis.orchestrator.svc/0", Endpoint("orchestrator", None, 6379)),
    ("http://broker-ingress.knative-eventing.svc.cluster.local/ns/b", Endpoint("knative-eventing")),
    ("http://secret-service.oih.svc.cluster.local:3000/api/v1", Endpoint("oih", None, 3000)),
    ("http://10.244.3.4:8080/x", Endpoint(None, "10.244.3.4", 8080)),
    ("https://sqs.eu-central-1.amazonaws.com", None),
    ("http://redis.orchestrator:6379", None),  # not a .svc name: resolved outside the rules
    ("http://127.0.0.1:9000", None),
    ("http://secret-service.oih.svc.example.org:3000", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("url", "endpoint"), CASES, ids=[str(c[0]) for c in CASES])
def test_the_endpoint_a_url_names(url: str | None, endpoint: Endpoint | None) -> None:
    assert endpoint_of(url) == endpoint


def test_the_internet_rule_always_excepts_the_metadata_address() -> None:
    [internet, _dns] = egress_rules(cluster_cidrs=(), endpoints=())
    [peer] = internet["to"]
    assert peer["ipBlock"] == {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}


def test_the_same_endpoint_is_one_rule() -> None:
    url = "http://secret-service.oih.svc.cluster.local:3000"
    rules = egress_rules(cluster_cidrs=("10.96.0.0/12",), endpoints=(url, url + "/api/v1"))
    assert len(rules) == 3
