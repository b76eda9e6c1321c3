"""Publishing due step messages to their queues (an outbox for messages, docs/architecture.md §7).

Run scripts only *schedule* messages (the `due` sorted set in `{exec}`): a step queue lives
under its flow's hash tag, so it cannot be written in the same script. The publisher then
claims due messages within the message rates (shared/execution/step_rates.py), signs each one's step
token, appends them to their queues and starts their step timeouts. A publisher that dies
between claim and record leaves the claim to expire, and the message is published again: a
duplicate, which step-execute drops by messageId. Nothing is ever published that was not
stored first, and nothing stored stays unpublished.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis import Redis

from shared import keys
from shared.clock import Clock
from shared.errors import OrchestratorError
from shared.execution import step_rates
from shared.model import flows
from shared.model.policy import Policy
from shared.ports.queue import StepQueue
from shared.ports.step_message import StepMessage
from shared.scripts import load_script
from shared.security import tokens
from shared.store import as_text

log = logging.getLogger(__name__)

CLAIM_LEASE_SECONDS = 30.0
TOKEN_REUSE_SECONDS = 60.0  # a step token names run + step, so messages may share one briefly
_FIELDS = ("run", "flow", "step", "tenant", "user", "attempt", "data", "context")


@dataclass
class Publisher:
    redis: Redis
    queue: StepQueue
    clock: Clock
    key: str  # ORCHESTRATOR_KEY: signs step tokens
    batch_size: int = 500
    _tokens: OrderedDict[tuple[str, str], tuple[str, float]] = field(
        default_factory=OrderedDict, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def drain(self, policy: Policy, limit: int = 10_000) -> int:
        """Publishes what is due now (within the rates); returns how many were published.

        Raises TemporaryError when a queue is unreachable (what was claimed is retried later).
        """
        published = 0
        while published < limit:
            count, full = self._batch(policy)
            published += count
            if not full:
                break
        return published

    def publish_created(self, policy: Policy, rows: Mapping[str, Mapping[str, object]]) -> int:
        """Publishes messages a script has just created, whose fields the caller knows (run,
        flow, step, tenant, user, attempt, data): the same claim, publish and record as
        `drain`, without reading the due set first. Returns how many were published."""
        if not rows:
            return 0
        now = self.clock.now()
        due = [
            step_rates.DueMessage(
                message_id, as_text(row["tenant"]), as_text(row["user"]), as_text(row["flow"])
            )
            for message_id, row in rows.items()
        ]
        claimed = step_rates.claim(
            self.redis, policy, due, now=now, lease_seconds=CLAIM_LEASE_SECONDS
        )
        if claimed:
            self._publish(policy, claimed, rows, now)
        return len(claimed)

    def _batch(self, policy: Policy) -> tuple[int, bool]:
        now = self.clock.now()
        ids = [
            as_text(i)
            for i in self.redis.zrangebyscore(keys.step_due(), "-inf", now, 0, self.batch_size)
        ]
        if not ids:
            return 0, False
        pipe = self.redis.pipeline(transaction=False)
        for message_id in ids:
            pipe.hmget(keys.step_message(message_id), list(_FIELDS))
        rows = {
            message_id: dict(zip(_FIELDS, values, strict=True))
            for message_id, values in zip(ids, pipe.execute(), strict=True)
        }
        gone = [message_id for message_id, row in rows.items() if row["run"] is None]
        if gone:  # the run ended meanwhile; its messages were dead-lettered
            self.redis.zrem(keys.step_due(), *gone)
        due = [
            step_rates.DueMessage(
                message_id,
                as_text(row["tenant"]),
                as_text(row["user"] or b""),
                as_text(row["flow"]),
            )
            for message_id, row in rows.items()
            if row["run"] is not None
        ]
        claimed = step_rates.claim(
            self.redis, policy, due, now=now, lease_seconds=CLAIM_LEASE_SECONDS
        )
        if claimed:
            self._publish(policy, claimed, rows, now)
        return len(claimed), len(ids) == self.batch_size

    def _publish(
        self,
        policy: Policy,
        claimed: list[str],
        rows: Mapping[str, Mapping[str, object]],
        now: float,
    ) -> None:
        by_queue: dict[str, list[StepMessage]] = {}
        record: list[str | int | float] = []
        message_keys: list[str] = []
        # nodes of global components: their messages go to the component's one queue
        global_nodes = flows.global_nodes(self.redis, {as_text(rows[m]["flow"]) for m in claimed})
        for message_id in claimed:
            row = rows[message_id]
            run_id, flow, step = as_text(row["run"]), as_text(row["flow"]), as_text(row["step"])
            tenant, attempt = as_text(row["tenant"]), int(as_text(row["attempt"] or b"0"))
            limits = policy.tenant(tenant)
            shared_node = global_nodes.get(flow, {}).get(step)
            message = StepMessage(
                run_id=run_id,
                flow_id=flow,
                step_id=step,
                message_id=message_id,
                tenant=tenant,
                attempt=attempt,
                data_json=as_text(row["data"] or b"{}"),
                token=self._token(policy, run_id, step, tenant, flow, now),
                context_json=as_text(row.get("context") or b""),
                function=shared_node.function if shared_node else "",
                fields_json=shared_node.fields_json if shared_node else "",
            )
            queue = (
                keys.global_step_queue(shared_node.component_id)
                if shared_node is not None
                else keys.step_queue(flow, step)
            )
            by_queue.setdefault(queue, []).append(message)
            message_keys.append(keys.step_message(message_id))
            record.extend((message_id, attempt, repr(now + limits.step_timeout_seconds)))
        try:
            for queue, messages in by_queue.items():
                self.queue.publish(queue, messages)
        except OrchestratorError as exc:
            # Still claimed: they come due again when the claim lease ends, and are retried.
            log.warning("publishing step messages failed (retried later): %s", exc.message)
            raise
        load_script("step_published")(
            self.redis,
            [keys.step_due(), keys.step_deadlines(), keys.step_queues(), *message_keys],
            [repr(now), len(by_queue), *by_queue, *record],
        )

    def _token(
        self, policy: Policy, run_id: str, step: str, tenant: str, flow: str, now: float
    ) -> str:
        with self._lock:
            cached = self._tokens.get((run_id, step))
        if cached is not None and now - cached[1] < TOKEN_REUSE_SECONDS:
            return cached[0]
        limits = policy.tenant(tenant)
        token = tokens.sign_step_token(
            self.key,
            run_id=run_id,
            step_id=step,
            tenant=tenant,
            flow_id=flow,
            ttl_seconds=limits.step_timeout_seconds * (limits.step_retries + 1),
            clock=self.clock,
        )
        with self._lock:
            self._tokens[(run_id, step)] = (token, now)
            if len(self._tokens) > 10_000:
                self._tokens.popitem(last=False)
        return token
