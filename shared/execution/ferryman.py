"""The `orchestratorToken` of each step message on the amqp backend (docs/oih.md).

Ferryman takes what it runs from this token, not from its environment: flow, step, user,
tenant, the node's function, fields and nodeSettings, the flow token as `apiKey` (it calls
the secret service, snapshots and the data hub with it) and the node's `credentials_id` as
`secretId`. We add which run, message and delivery (attempt) it is, and sign it: ferryman
echoes the token on every reply, and the backchannel trusts a reply only with our signature
(shared/interop/backchannel.py). The flow token therefore travels in each message, on the
flow's own queue, which only the flow's RabbitMQ user may read (docs/architecture.md §8).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from shared.clock import Clock
from shared.errors import TemporaryError
from shared.model import flows
from shared.model.policy import Policy
from shared.ports import ferryman as names
from shared.ports.step_message import StepMessage
from shared.security import tokens

CACHE_SECONDS = 5.0  # a flow document read serves the messages of a burst


@dataclass
class FerrymanTokens:
    redis: Redis
    clock: Clock
    key: str  # ORCHESTRATOR_KEY
    flow_token: Callable[[str], str | None]  # deploy's stored flow token of a flow, if any
    policy: Policy  # step timeout x retries: how long a message's token must stay valid
    _cache: dict[str, tuple[float, Any]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _flow(self, flow_id: str) -> Any:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(flow_id)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        stored = flows.get(self.redis, flow_id)
        if stored is None:
            raise TemporaryError(f"flow {flow_id} is not stored (stopped?): message not published")
        value = (stored.flow, self.flow_token(flow_id) or "")
        with self._lock:
            self._cache[flow_id] = (now, value)
            if len(self._cache) > 1000:
                self._cache.pop(next(iter(self._cache)))
        return value

    def claims(self, message: StepMessage) -> dict[str, Any]:
        flow, api_key = self._flow(message.flow_id)
        node = flow.node(message.step_id)
        raw_nodes = (flow.document.get("graph") or {}).get("nodes") or []
        raw = next((n for n in raw_nodes if isinstance(n, dict) and n.get("id") == node.id), {})
        claims: dict[str, Any] = {
            "flowId": flow.id,
            "stepId": node.id,
            "userId": flow.user,
            "tenant": flow.tenant,
            "function": node.function,
            "fields": dict(node.fields),
            "nodeSettings": dict(raw.get("nodeSettings") or {}),
            "apiKey": api_key,
            names.RUN_CLAIM: message.run_id,
            names.MESSAGE_CLAIM: message.message_id,
            names.ATTEMPT_CLAIM: message.attempt,
        }
        if node.credentials_id:
            claims["secretId"] = node.credentials_id
        return claims

    def sign(self, message: StepMessage) -> tuple[str, str]:
        """(the token, the user id) of one message."""
        claims = self.claims(message)
        limits = self.policy.tenant(message.tenant)
        ttl = limits.step_timeout_seconds * (limits.step_retries + 1) + 60
        token = tokens.sign_orchestrator_token(self.key, claims, ttl_seconds=ttl, clock=self.clock)
        return token, str(claims["userId"])
