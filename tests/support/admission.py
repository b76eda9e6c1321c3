"""Driving the admission scripts directly (no runtime): submit, release, dispatch, penalize."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

from redis import Redis

from shared import keys
from shared.admission import queue as admission
from shared.clock import FakeClock
from shared.events import OutgoingEvent
from shared.model.policy import Policy

SOURCE = "/component-orchestrator/flow-start"


def penalize(
    redis: Redis, level: str, subject_id: str, step: str | None, *, tenant: str = "acme"
) -> None:
    """Penalty state as policy-check writes it (hash `step` + index; a user or flow of
    `tenant`); None lifts it."""
    key = keys.penalty(level, subject_id, tenant)
    member = keys.penalty_member(level, subject_id, tenant)
    if step is None:
        redis.delete(key)
        redis.zrem(keys.penalty_index(), member)
        return
    redis.hset(key, mapping={"step": step, "tenant": tenant})
    redis.zadd(keys.penalty_index(), {member: 1})


class Admission:
    def __init__(self, redis: Redis, clock: FakeClock, policy: Policy) -> None:
        self.redis = redis
        self.clock = clock
        self.policy = policy
        self._ids = itertools.count(1)
        self.tokens: dict[str, int] = {}

    def inputs(self) -> admission.Inputs:
        return admission.read_inputs(self.redis, self.policy)

    def deploy(self, *flows: str) -> None:
        for flow in flows:
            admission.set_deployment(
                self.redis, self.inputs(), None, flow_id=flow, started=True,
                now=self.clock.now(), source=SOURCE,
            )  # fmt: skip

    def submit(self, tenant: str, flow: str, user: str = "u", msg: Any = None) -> str:
        run_id = f"{flow}~{next(self._ids)}"
        run = admission.ExecuteRun(
            run_id=run_id, flow_id=flow, tenant=tenant, user=user, limit_seconds=3600,
            msg_json=json.dumps(msg or {}),
        )  # fmt: skip
        result, token = admission.execute(
            self.redis, self.inputs(), None, run, now=self.clock.now(), source=SOURCE
        )
        assert token is not None
        self.tokens[run_id] = token
        return result

    def release(self, run_id: str) -> str:
        result, _ = admission.release(
            self.redis, self.inputs(), None, run_id=run_id, token=self.tokens[run_id],
            now=self.clock.now(), source=SOURCE,
        )  # fmt: skip
        return result

    def dispatch(self) -> admission.Dispatched:
        return admission.dispatch(self.redis, self.inputs(), now=self.clock.now(), source=SOURCE)

    # --- reading -------------------------------------------------------------------------
    def running(self) -> dict[str, dict[str, Any]]:
        return admission.admitted_runs(self.redis)

    def outbox(self) -> list[dict[str, Any]]:
        entries = self.redis.lrange(keys.outbox(keys.ADMISSION), 0, -1)
        return [json.loads(OutgoingEvent.from_json(raw).to_json()) for raw in entries]

    def admitted_order(self) -> list[dict[str, Any]]:
        """Data of every admitted event so far, in admission order."""
        return [e["data"] for e in self.outbox() if e["type"].endswith(".admitted")]

    def admitted_per_tenant(self) -> Counter[str]:
        return Counter(data["tenant"] for data in self.admitted_order())
