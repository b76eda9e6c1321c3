"""Names, labels and selectors of the objects deploy writes (docs/architecture.md §5).

A flow node's objects are named `<flow>-<node>-<hash>` and a global component's
`global-<component>-<hash>`: DNS-1123, at most 63 characters, always a 64-bit hash of the
full ids, so truncated names never collide and no one finds another flow's name by trying.
The names depend only on the ids, so a changed flow is an update of the same objects. Names
an earlier release wrote (32-bit hashes) are the `legacy_*` ones, read for upgrades.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shared.ports.driver import (
    COMPONENT_ID_ANNOTATION,
    FLOW_ID_ANNOTATION,
    LABEL_PREFIX,
    LEGACY_NAME_HASH_CHARS,
    MAX_NAME,
    NAME_HASH_CHARS,
    NODE_ID_ANNOTATION,
    Manifest,
    label_value,
    short_hash,
)

TENANT_LABEL = LABEL_PREFIX + "tenant"
USER_LABEL = LABEL_PREFIX + "user"
FLOW_LABEL = LABEL_PREFIX + "flow"
NODE_LABEL = LABEL_PREFIX + "node"
COMPONENT_LABEL = LABEL_PREFIX + "component"
NAME_LABEL = "app.kubernetes.io/name"


def dns_part(value: str) -> str:
    """Lower-case DNS-1123 label characters only; runs of anything else become one '-'."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", value.lower())).strip("-")


def object_name(*parts: str, hash_of: Sequence[str], hash_chars: int = NAME_HASH_CHARS) -> str:
    """`<part>-<part>-<hash>` within 63 characters; each part gets a fair share of the room.
    `hash_chars` other than the default only to find names an earlier release wrote."""
    suffix = short_hash(*hash_of, chars=hash_chars)
    cleaned = [dns_part(p) or "x" for p in parts]
    room = MAX_NAME - len(suffix) - len(cleaned)  # one '-' after each part
    shares = _fair_shares([len(p) for p in cleaned], room)
    pieces = [p[:share].strip("-") or "x" for p, share in zip(cleaned, shares, strict=True)]
    return "-".join([*pieces, suffix])


def _fair_shares(lengths: list[int], room: int) -> list[int]:
    """Give each part up to an equal share; what short parts leave over goes to longer ones."""
    shares = [0] * len(lengths)
    left, pending = room, sorted(range(len(lengths)), key=lambda i: lengths[i])
    while pending:
        equal = left // len(pending)
        i = pending.pop(0)
        shares[i] = min(lengths[i], equal)
        left -= shares[i]
    return shares


def flow_selector(flow_id: str) -> str:
    return f"{FLOW_LABEL}={label_value(flow_id)}"


def component_selector(component_id: str) -> str:
    return f"{COMPONENT_LABEL}={label_value(component_id)},!{FLOW_LABEL}"


def deployment_name(flow_id: str, node_id: str, *, hash_chars: int = NAME_HASH_CHARS) -> str:
    return object_name(flow_id, node_id, hash_of=(flow_id, node_id), hash_chars=hash_chars)


def global_name(component_id: str, *, hash_chars: int = NAME_HASH_CHARS) -> str:
    return object_name(
        "global", component_id, hash_of=("global", component_id), hash_chars=hash_chars
    )


def legacy_deployment_name(flow_id: str, node_id: str) -> str:
    """The name a release before 64-bit hashes gave this node's objects."""
    return deployment_name(flow_id, node_id, hash_chars=LEGACY_NAME_HASH_CHARS)


def legacy_global_name(component_id: str) -> str:
    return global_name(component_id, hash_chars=LEGACY_NAME_HASH_CHARS)


def current_name(manifest: Manifest) -> str | None:
    """The name this release gives an object, from its exact-id annotations (None: not ours)."""
    annotations = manifest["metadata"].get("annotations") or {}
    flow_id, node_id = annotations.get(FLOW_ID_ANNOTATION), annotations.get(NODE_ID_ANNOTATION)
    if flow_id and node_id:
        return deployment_name(flow_id, node_id)
    component_id = annotations.get(COMPONENT_ID_ANNOTATION)
    labels = manifest["metadata"].get("labels") or {}
    if component_id and FLOW_LABEL not in labels:
        return global_name(component_id)
    return None
