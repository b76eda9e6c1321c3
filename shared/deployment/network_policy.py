"""Where a flow pod may connect (docs/security.md, "The network"): pure functions, no clients.

Every Deployment deploy renders gets a NetworkPolicy of the same name selecting its pods:
no ingress at all; egress to the internet (connectors call outside APIs) except the cluster's
own address ranges (`CLUSTER_POD_CIDRS`, `CLUSTER_SERVICE_CIDRS`) and the cloud metadata
address 169.254.169.254, which are never reachable; and, inside the cluster, only DNS and the
endpoints a worker needs: its queue (the workers' Redis, or the SQS endpoint), the broker
ingress (`K_SINK`) and the hub's secret, snapshot and attachment services.

An in-cluster endpoint is named by URL. `<service>.<namespace>.svc[.cluster.local]` allows that
namespace, on the URL's port (a Redis URL without one: 6379); a URL without a port allows
the namespace on any port (a Service may map port 80 to another pod port, and NetworkPolicies
see pod ports). An IP literal allows that address and port. Any other name is outside the
cluster and reached through the internet rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

METADATA_ADDRESS = "169.254.169.254/32"
INTERNET = "0.0.0.0/0"
DNS_PORTS = ({"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53})
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class Endpoint:
    """One in-cluster place a worker may reach: a namespace or an address, maybe one port."""

    namespace: str | None = None
    address: str | None = None
    port: int | None = None

    def peer(self) -> dict[str, Any]:
        rule: dict[str, Any]
        if self.namespace is not None:
            selector = {"matchLabels": {NAMESPACE_NAME_LABEL: self.namespace}}
            rule = {"to": [{"namespaceSelector": selector}]}
        else:
            rule = {"to": [{"ipBlock": {"cidr": f"{self.address}/32"}}]}
        if self.port is not None:
            rule["ports"] = [{"protocol": "TCP", "port": self.port}]
        return rule


def endpoint_of(url: str | None) -> Endpoint | None:
    """The in-cluster endpoint a URL names, or None (unset, or outside the cluster)."""
    if not url:
        return None
    parsed = urlparse(url)
    host = (parsed.hostname or "").rstrip(".").lower()
    try:
        port = parsed.port or DEFAULT_PORTS.get(parsed.scheme)
    except ValueError:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        if len(labels) >= 3 and labels[2] == "svc" and labels[3:] in ([], ["cluster", "local"]):
            return Endpoint(namespace=labels[1], port=port)
        return None
    if address.version != 4 or address.is_loopback:
        return None
    return Endpoint(address=str(address), port=port)


def egress_rules(
    *,
    cluster_cidrs: Sequence[str],
    endpoints: Sequence[str | None],
) -> list[dict[str, Any]]:
    """The egress rules of a flow pod (see the module text)."""
    denied = sorted({*cluster_cidrs, METADATA_ADDRESS}, key=_network_key)
    rules: list[dict[str, Any]] = [
        {"to": [{"ipBlock": {"cidr": INTERNET, "except": denied}}]},
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": [dict(p) for p in DNS_PORTS],
        },
    ]
    seen: set[Endpoint] = set()
    for url in endpoints:
        endpoint = endpoint_of(url)
        if endpoint is None or endpoint in seen:
            continue
        if endpoint.address is not None and _is_metadata(endpoint.address):
            continue  # never, whatever a setting says
        seen.add(endpoint)
        rules.append(endpoint.peer())
    return rules


def network_policy(
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    pod_selector: dict[str, str],
    egress: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": dict(labels), "annotations": dict(annotations)},
        "spec": {
            "podSelector": {"matchLabels": dict(pod_selector)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def _is_metadata(address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(METADATA_ADDRESS)


def _network_key(cidr: str) -> tuple[int, int]:
    network = ipaddress.ip_network(cidr)
    return int(network.network_address), network.prefixlen
