"""Kubernetes NetworkPolicy semantics, for manifest tests (no cluster runs here).

A pod selected by no policy of a type may do anything of that type; once selected, a
connection is allowed when some rule of some selecting policy allows it (policies add up).
An egress rule allows a destination when one of its peers matches (an ipBlock by address, minus
its excepts; a namespaceSelector by the destination namespace's labels, with a podSelector by
the destination pod's labels when both are given) and one of its ports does (none: all ports).
Destinations are pod addresses, as a CNI sees them after a Service's address is translated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Destination:
    address: str
    port: int
    protocol: str = "TCP"
    namespace: str | None = None  # None: outside the cluster
    pod_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        if self.namespace is None:
            return {}
        return {"kubernetes.io/metadata.name": self.namespace}


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return False
    wanted = selector.get("matchLabels") or {}
    assert not selector.get("matchExpressions"), "not modelled"
    return all(labels.get(k) == v for k, v in wanted.items())


def _peer_matches(peer: Mapping[str, Any], to: Destination) -> bool:
    block = peer.get("ipBlock")
    if block is not None:
        address = ipaddress.ip_address(to.address)
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(e) for e in block.get("except") or [])
    if to.namespace is None:
        return False  # namespace and pod selectors only ever match pods in the cluster
    namespaces = peer.get("namespaceSelector")
    if namespaces is not None and not _selects(namespaces, to.namespace_labels):
        return False
    pods = peer.get("podSelector")
    return pods is None or _selects(pods, to.pod_labels)


def _port_matches(ports: Sequence[Mapping[str, Any]] | None, to: Destination) -> bool:
    if not ports:
        return True
    return any(
        p.get("protocol", "TCP") == to.protocol and p.get("port") in (None, to.port) for p in ports
    )


def egress_allowed(
    policies: Sequence[Mapping[str, Any]],
    pod_namespace: str,
    pod_labels: Mapping[str, str],
    to: Destination,
) -> bool:
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", pod_namespace) == pod_namespace
        and _selects(p["spec"]["podSelector"], pod_labels)
        and "Egress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("egress") or []:
            peers = rule.get("to")
            if (not peers or any(_peer_matches(p, to) for p in peers)) and _port_matches(
                rule.get("ports"), to
            ):
                return True
    return False


def ingress_allowed(
    policies: Sequence[Mapping[str, Any]], pod_namespace: str, pod_labels: Mapping[str, str]
) -> bool:
    """Whether anything at all may connect to the pod (any rule of a selecting policy)."""
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", pod_namespace) == pod_namespace
        and _selects(p["spec"]["podSelector"], pod_labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    return not selecting or any(p["spec"].get("ingress") for p in selecting)
