"""Making one target (a flow or a global component) match its record, level-based.

`Deployer` applies a record's manifests (NetworkPolicies, then Secrets, then Deployments; the
flow token added only here; never over an object of the same name that belongs to another
target, which fails this one instead),
skips the write when the hash of what is wanted equals the hash last applied ("never
twice"), repairs drift (missing objects, a changed object hash, other replicas), removes
objects of the target that are no longer wanted (before applying, so a renamed node never
runs twice), upgrades records an earlier release wrote, and judges readiness against the
`deploying` deadline. Each target is worked on under its own redis-py Lock, extended while
a long apply runs. Event building and the atomic commit stay with the handler.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from redis import Redis
from redis.exceptions import LockError, WatchError
from redis.lock import Lock

from shared import keys
from shared.clock import Clock
from shared.deployment import records as deploy_records
from shared.deployment.desired_state import (
    COMPONENT_ID_ANNOTATION,
    FLOW_ID_ANNOTATION,
    FLOW_TOKEN_KEY,
    NODE_ID_ANNOTATION,
    credential_id,
    credentials_generation_of,
    desired_hash,
    step_queues_of,
    suspended,
    with_secret_values,
)
from shared.deployment.object_names import FLOW_LABEL, component_selector, flow_selector
from shared.deployment.records import TargetRecord
from shared.deployment.services import DeployServices
from shared.deployment.upgrades import hardened, holds_store_url, needs_hardening, without_store_url
from shared.errors import OrchestratorError, TemporaryError
from shared.events import OutgoingEvent
from shared.model import penalties
from shared.ports.driver import (
    KINDS,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OBJECT_HASH_ANNOTATION,
    Manifest,
    ObjectTaken,
    ObservedObject,
)
from shared.runtime import outbox

log = logging.getLogger(__name__)


class TargetBusy(TemporaryError):
    """Another deploy, stop or reconcile of this target holds its lock."""


def selector(kind: str, target_id: str) -> str:
    return flow_selector(target_id) if kind == "flow" else component_selector(target_id)


def target_of(obj: ObservedObject) -> str | None:
    """`kind:id` of the target an object of ours belongs to (exact ids from annotations)."""
    flow_id = obj.annotations.get(FLOW_ID_ANNOTATION)
    if flow_id:
        return f"flow:{flow_id}"
    component_id = obj.annotations.get(COMPONENT_ID_ANNOTATION)
    if component_id and FLOW_LABEL not in obj.labels:
        return f"component:{component_id}"
    return None


@dataclass
class HeldLock:
    lock: Lock
    seconds: float

    def extend(self) -> None:
        """Called between API writes: a long apply keeps its lock."""
        try:
            self.lock.extend(self.seconds, replace_ttl=True)
        except LockError as exc:
            raise TemporaryError("lost the deploy lock during a long apply; retry") from exc


@dataclass(frozen=True)
class Verdict:
    """What readiness says about a deploying target."""

    ready: bool
    error: str | None
    summary: str


class Deployer:
    def __init__(
        self,
        redis: Redis,
        services: DeployServices,
        clock: Clock,
        ready_timeout: float,
        writable_root: Collection[str] = (),
    ) -> None:
        self.redis = redis
        self.services = services
        self.driver = services.driver
        self.clock = clock
        self.ready_timeout = ready_timeout
        self.writable_root = writable_root  # the policy's writable_root_components

    # ---- locking -----------------------------------------------------------------------------
    @contextmanager
    def locked(self, kind: str, target_id: str, *, wait: bool = True) -> Iterator[HeldLock | None]:
        """Yields the held lock, or None when `wait` is False and someone else holds it."""
        lock = self.redis.lock(
            keys.deploy_lock(kind, target_id),
            timeout=self.services.lock_seconds,
            blocking=wait,
            blocking_timeout=self.services.lock_wait_seconds if wait else None,
            thread_local=False,
        )
        if not lock.acquire():
            if wait:
                raise TargetBusy(f"{kind} {target_id} is being deployed by another request")
            yield None
            return
        try:
            yield HeldLock(lock, self.services.lock_seconds)
        finally:
            try:
                lock.release()
            except LockError:
                log.warning("deploy lock of %s %s expired before release", kind, target_id)

    # ---- what should run ---------------------------------------------------------------------
    def is_suspended(self, record: TargetRecord) -> bool:
        """A flow is down while its tenant, first owner or itself is at `suspend`."""
        if record.kind != "flow":
            return False
        return penalties.is_suspended(
            self.redis, tenant=record.tenant, user=record.user, flow=record.id
        )

    @staticmethod
    def effective(record: TargetRecord, is_suspended: bool) -> tuple[Manifest, ...]:
        return suspended(record.manifests) if is_suspended else record.manifests

    # ---- worker credentials ------------------------------------------------------------------
    def grant(self, record: TargetRecord) -> dict[str, str]:
        """Writes the target's queue user (again) to every node (a flow's, or a global
        component's for its one queue); returns its Secret variables."""
        generation = credentials_generation_of(record.manifests)
        if generation is None:
            return {}
        queues = step_queues_of(record.manifests)
        who = credential_id(record.kind, record.id)
        return self.services.credentials.grant(who, queues, generation)

    def revoke(self, kind: str, target_id: str) -> None:
        self.services.credentials.revoke(credential_id(kind, target_id))

    def upgraded(self, record: TargetRecord) -> TargetRecord:
        """A record an earlier release wrote, rewritten, stored, and re-applied by the caller:
        Secrets that still hold the orchestrator's REDIS_URL get a fresh credentials generation;
        names with a 32-bit hash, pods not secured or Deployments without a NetworkPolicy get
        this release's (the objects under the old names are removed by `reconcile` before the
        new ones are applied). Each happens once: the stored record no longer matches."""
        manifests = record.manifests
        if holds_store_url(manifests):
            kind = record.kind
            generation = self.services.credentials.rotate(record.id) if kind == "flow" else None
            manifests = without_store_url(manifests, generation)
            log.info("%s: workers' store credentials replaced by their own", record.member)
        if needs_hardening(manifests):
            manifests = hardened(manifests, self.services.worker, self.writable_root)
            log.info("%s: objects renamed (64-bit hash) and pods secured", record.member)
        if manifests == record.manifests:
            return record
        upgraded = replace(record, manifests=manifests, desired_hash=desired_hash(manifests))
        deploy_records.write(self.redis, upgraded)
        return upgraded

    # ---- writing -----------------------------------------------------------------------------
    def apply(
        self,
        record: TargetRecord,
        manifests: Sequence[Manifest],
        held: HeldLock | None,
        credentials: dict[str, str] | None = None,
    ) -> int:
        """NetworkPolicies first (no pod runs unfenced), then Secrets (pods need them), then
        Deployments; returns the number of writes. An object of the same name that belongs to
        another target (or is not ours) is never written: `ObjectTaken`, this target fails."""
        ordered = sorted(manifests, key=lambda m: (KINDS.index(m["kind"]), m["metadata"]["name"]))
        values: dict[str, str] | None = None
        for manifest in ordered:
            self.check_owner(record, manifest)
            if manifest["kind"] == "Secret" and record.kind == "flow":
                if values is None:
                    token = self.services.tokens.ensure(record.id, record.tenant, record.user)
                    granted = credentials if credentials is not None else self.grant(record)
                    values = {**granted, FLOW_TOKEN_KEY: token}
                manifest = with_secret_values(manifest, values)
            elif manifest["kind"] == "Secret":  # a global component: its queue user only
                if values is None:
                    values = credentials if credentials is not None else self.grant(record)
                if values:
                    manifest = with_secret_values(manifest, values)
            self.driver.apply(manifest)
            if held is not None:
                held.extend()
        return len(ordered)

    def check_owner(self, record: TargetRecord, manifest: Manifest) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        found = self.driver.observe(kind, name)
        if found is None:
            return
        if found.labels.get(MANAGED_BY_LABEL) == MANAGED_BY and target_of(found) == record.member:
            return
        log.warning(
            "%s: %s %s belongs to %s: not overwritten",
            record.member,
            kind,
            name,
            target_of(found) or "no target of ours",
        )
        # The owner is not named: it may be another tenant's flow.
        raise ObjectTaken(
            f"{kind} {name} already exists and belongs to another flow or component; "
            f"it was not overwritten and {record.kind} {record.id} was not deployed"
        )

    def remove(
        self,
        kind: str,
        target_id: str,
        observed: Sequence[ObservedObject] | None = None,
        keep: frozenset[tuple[str, str]] = frozenset(),
    ) -> int:
        """Deletes the target's objects (Deployments first), except `keep` (kind, name)."""
        if observed is None:
            observed = self.driver.list_managed(selector(kind, target_id))
        member = f"{kind}:{target_id}"
        doomed = [o for o in observed if target_of(o) == member and (o.kind, o.name) not in keep]
        doomed.sort(key=lambda o: (o.kind != "Deployment", o.name))
        for obj in doomed:
            self.driver.delete(obj.kind, obj.name)
            log.info("deleted %s %s of %s", obj.kind, obj.name, member)
        return len(doomed)

    # ---- drift and readiness -----------------------------------------------------------------
    @staticmethod
    def drifted(
        manifests: Sequence[Manifest], observed: Sequence[ObservedObject]
    ) -> list[Manifest]:
        """Desired objects that are missing, carry another object hash, or were scaled."""
        have = {(o.kind, o.name): o for o in observed}
        result = []
        for manifest in manifests:
            obj = have.get((manifest["kind"], manifest["metadata"]["name"]))
            wanted_hash = manifest["metadata"]["annotations"].get(OBJECT_HASH_ANNOTATION)
            if (
                obj is None
                or obj.annotations.get(OBJECT_HASH_ANNOTATION) != wanted_hash
                or (
                    manifest["kind"] == "Deployment"
                    and obj.replicas != manifest["spec"]["replicas"]
                )
            ):
                result.append(manifest)
        return result

    def verdict(self, record: TargetRecord, manifests: Sequence[Manifest]) -> Verdict:
        names = [m["metadata"]["name"] for m in manifests if m["kind"] == "Deployment"]
        found = {r.name: r for r in self.driver.readiness(selector(record.kind, record.id))}
        missing = [n for n in names if n not in found]
        states = [found[n] for n in names if n in found]
        ready = not missing and all(r.is_ready for r in states)
        error = next((r.error for r in states if r.error), None)
        summary = f"{sum(r.ready for r in states)}/{sum(r.desired for r in states)} replicas ready"
        if missing:
            summary += f", missing {', '.join(sorted(missing))}"
        if ready and record.kind == "flow":
            short = self._consuming(record, manifests)
            if short:
                ready = False
                summary += f", not yet consuming: {', '.join(short)}"
        return Verdict(ready=ready, error=error, summary=summary)

    def _consuming(self, record: TargetRecord, manifests: Sequence[Manifest]) -> list[str]:
        """Steps whose queue has fewer consumers than replicas (backends that count them)."""
        short = []
        for manifest in manifests:
            if manifest["kind"] != "Deployment" or not manifest["spec"]["replicas"]:
                continue
            node = manifest["metadata"]["annotations"].get(NODE_ID_ANNOTATION)
            if not node:
                continue
            try:
                count = self.services.credentials.consumers(record.id, node)
            except OrchestratorError as exc:
                log.warning("consumers of %s/%s unknown: %s", record.id, node, exc.message)
                count = 0
            if count is not None and count < int(manifest["spec"]["replicas"]):
                short.append(f"{node} {count}/{manifest['spec']['replicas']}")
        return short

    def wait_ready(self, record: TargetRecord, manifests: Sequence[Manifest]) -> bool:
        """A short wait inside the request; the reconcile tick does the rest."""
        give_up = self.clock.now() + self.services.ready_wait_seconds
        while True:
            if self.verdict(record, manifests).ready:
                return True
            if self.clock.now() >= give_up:
                return False
            self.clock.sleep(self.services.ready_poll_seconds)

    def failure_reason(self, verdict: Verdict) -> str:
        detail = verdict.error or verdict.summary
        return f"not ready after {self.ready_timeout:g}s: {detail}"

    # ---- one reconcile pass ------------------------------------------------------------------
    def reconcile(
        self,
        record: TargetRecord,
        observed: Sequence[ObservedObject],
        held: HeldLock | None,
    ) -> TargetRecord:
        """Re-applies what differs, removes what is extra, and judges a deploying target.

        Returns the record as it should now be stored (status may have moved on)."""
        is_suspended = self.is_suspended(record)
        manifests = self.effective(record, is_suspended)
        wanted = desired_hash(manifests)
        # Every pass: ACL users live per node and a failover may have promoted one without it.
        credentials = self.grant(record)
        stale = manifests if wanted != record.applied_hash else self.drifted(manifests, observed)
        names = frozenset((m["kind"], m["metadata"]["name"]) for m in manifests)
        extra = [o for o in observed if (o.kind, o.name) not in names]
        if extra:  # first: a node renamed by an upgrade never runs under both names
            self.remove(record.kind, record.id, extra)
        if stale:
            log.info("%s: re-applying %d object(s)", record.member, len(stale))
            self.apply(record, stale, held, credentials)
        now = self.clock.now()
        updated = replace(record, applied_hash=wanted, suspended=is_suspended)
        if record.status != "deploying":
            return updated
        if is_suspended:
            # Suspended while deploying: judged only once it may run again, with a full timeout.
            return replace(updated, deadline=max(record.deadline, now + self.ready_timeout))
        verdict = self.verdict(record, manifests)
        if verdict.ready:
            return updated.with_status("started", now=now)
        if now >= record.deadline:
            return replace(updated, applied_hash="").with_status(
                "failed", reason=self.failure_reason(verdict), now=now
            )
        return updated


def commit_transition(
    redis: Redis, before: TargetRecord, after: TargetRecord, events: Sequence[OutgoingEvent]
) -> bool:
    """Stores `after` and stages its events atomically, unless the record changed meanwhile."""
    with redis.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(before.key)  # type: ignore[no-untyped-call]
            current = deploy_records.load(pipe, before.kind, before.id)
            if current is None or current.to_redis() != before.to_redis():
                return False
            pipe.multi()
            deploy_records.write(pipe, after)
            outbox.stage(pipe, keys.DEPLOY, events)
            pipe.execute()
        except WatchError:
            return False
    return True
