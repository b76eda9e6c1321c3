"""Deploy's own state in Redis (docs/architecture.md §5, who owns which state): one record per
target.

A target is a flow or a global component. Its record holds what should run (the manifests,
without the flow token and before suspension), the hash of what was last applied (so the
same desired state is never written twice), the phase (`deploying` with its deadline,
`started`, `failed`) and what the events report (replicas, clamped nodes, reason).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from redis import Redis
from redis.client import Pipeline

from shared import keys
from shared.deployment.desired_state import DesiredState, TargetKind
from shared.ports.driver import Manifest
from shared.security.redact import redact_text

Status = Literal["deploying", "started", "failed"]
LIVE: frozenset[str] = frozenset({"deploying", "started"})


@dataclass(frozen=True)
class TargetRecord:
    kind: TargetKind
    id: str
    status: Status
    desired_hash: str  # of the unsuspended desired state: a new one starts a new phase
    manifests: tuple[Manifest, ...] = ()
    applied_hash: str = ""  # of what was last applied (suspension included)
    deadline: float = 0.0
    since: float = 0.0
    tenant: str = ""
    user: str = ""
    replicas: dict[str, int] = field(default_factory=dict)
    clamped: tuple[str, ...] = ()
    reason: str = ""
    suspended: bool = False

    @property
    def key(self) -> str:
        return keys.deploy_target(self.kind, self.id)

    @property
    def member(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @classmethod
    def deploying(
        cls, desired: DesiredState, *, now: float, timeout: float, suspended: bool = False
    ) -> TargetRecord:
        return cls(
            kind=desired.kind,
            id=desired.id,
            status="deploying",
            desired_hash=desired.hash,
            manifests=desired.manifests,
            deadline=now + timeout,
            since=now,
            tenant=desired.tenant,
            user=desired.user,
            replicas=dict(desired.replicas),
            clamped=desired.clamped,
            suspended=suspended,
        )

    def with_status(self, status: Status, *, reason: str = "", now: float) -> TargetRecord:
        # A reason quotes the API or a pod's last words, which may hold a token: never stored.
        return replace(self, status=status, reason=redact_text(reason), since=now)

    def to_redis(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "id": self.id,
            "status": self.status,
            "desired_hash": self.desired_hash,
            "manifests": json.dumps(self.manifests, separators=(",", ":")),
            "applied_hash": self.applied_hash,
            "deadline": repr(self.deadline),
            "since": repr(self.since),
            "tenant": self.tenant,
            "user": self.user,
            "replicas": json.dumps(self.replicas, sort_keys=True),
            "clamped": json.dumps(list(self.clamped)),
            "reason": self.reason,
            "suspended": "1" if self.suspended else "0",
        }

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes]) -> TargetRecord:
        text = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            kind=cast(TargetKind, text["kind"]),
            id=text["id"],
            status=cast(Status, text["status"]),
            desired_hash=text.get("desired_hash", ""),
            manifests=tuple(json.loads(text.get("manifests") or "[]")),
            applied_hash=text.get("applied_hash", ""),
            deadline=float(text.get("deadline") or 0),
            since=float(text.get("since") or 0),
            tenant=text.get("tenant", ""),
            user=text.get("user", ""),
            replicas={k: int(v) for k, v in json.loads(text.get("replicas") or "{}").items()},
            clamped=tuple(json.loads(text.get("clamped") or "[]")),
            reason=text.get("reason", ""),
            suspended=text.get("suspended") == "1",
        )


def load(redis: Redis, kind: str, target_id: str) -> TargetRecord | None:
    raw = cast(dict[bytes, bytes], redis.hgetall(keys.deploy_target(kind, target_id)))
    return TargetRecord.from_redis(raw) if raw else None


def members(redis: Redis) -> list[tuple[str, str]]:
    """(kind, id) of every target with a record."""
    result = []
    for member in cast(set[bytes], redis.smembers(keys.deploy_targets())):
        kind, _, target_id = member.decode().partition(":")
        result.append((kind, target_id))
    return sorted(result)


def load_all(redis: Redis) -> list[TargetRecord]:
    pairs = members(redis)
    pipe = redis.pipeline(transaction=False)
    for kind, target_id in pairs:
        pipe.hgetall(keys.deploy_target(kind, target_id))
    return [TargetRecord.from_redis(raw) for raw in pipe.execute() if raw]


def write(pipe: Pipeline | Redis, record: TargetRecord) -> None:
    """Stores the record (queued on `pipe` when it is a MULTI) and its tenant replica share."""
    pipe.delete(record.key)
    pipe.hset(record.key, mapping=cast(Any, record.to_redis()))
    pipe.sadd(keys.deploy_targets(), record.member)
    if record.kind == "flow" and record.tenant:
        share = keys.deploy_tenant_replicas(record.tenant)
        if record.live:
            pipe.hset(share, record.id, sum(record.replicas.values()))
        else:
            pipe.hdel(share, record.id)


def remove(pipe: Pipeline | Redis, record: TargetRecord) -> None:
    pipe.delete(record.key)
    pipe.srem(keys.deploy_targets(), record.member)
    if record.kind == "flow" and record.tenant:
        pipe.hdel(keys.deploy_tenant_replicas(record.tenant), record.id)


def replicas_elsewhere(redis: Redis, tenant: str, flow_id: str) -> int:
    """The tenant's replicas in its other live flows (for max_replicas)."""
    shares = cast(dict[bytes, bytes], redis.hgetall(keys.deploy_tenant_replicas(tenant)))
    return sum(int(n) for f, n in shares.items() if f.decode() != flow_id)


def of_subject(records: Iterable[TargetRecord], level: str, subject_id: str) -> list[TargetRecord]:
    """The flows a penalty subject covers: a tenant's, a user's (first owner), or one flow."""
    match level:
        case "tenant":
            return [r for r in records if r.kind == "flow" and r.tenant == subject_id]
        case "user":
            return [r for r in records if r.kind == "flow" and r.user == subject_id]
        case "flow":
            return [r for r in records if r.kind == "flow" and r.id == subject_id]
    return []
