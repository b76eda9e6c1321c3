"""What the deploy function works with (its driver, component repository, flow tokens) and the
timings it uses; shared.wiring.deploy builds it from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from redis import Redis

from shared.clock import Clock
from shared.deployment import flow_tokens
from shared.deployment.queue_credentials import NoQueueCredentials, QueueCredentials
from shared.deployment.worker_settings import WorkerSettings
from shared.ports.components import ComponentRepository
from shared.ports.driver import DeployDriver
from shared.ports.users import UserDirectory

log = logging.getLogger(__name__)

READY_WAIT_SECONDS = 2.0  # how long a request waits for readiness before leaving it to the tick
READY_POLL_SECONDS = 0.25
LOCK_SECONDS = 60.0  # a crashed holder blocks its target at most this long
LOCK_WAIT_SECONDS = 20.0  # an event waits this long for a concurrent one, then 503


class FlowTokens(Protocol):
    def ensure(self, flow_id: str, tenant: str, user: str) -> str:
        """The flow's IAM token ('' when there is none to have)."""
        ...

    def revoke(self, flow_id: str) -> None: ...


class IamFlowTokens:
    """One IAM token per flow (shared.deployment.flow_tokens), created once and revoked on stop."""

    def __init__(
        self, redis: Redis, issuer: flow_tokens.FlowTokenIssuer, clock: Clock, key: str
    ) -> None:
        self._redis, self._issuer, self._clock, self._key = redis, issuer, clock, key

    def ensure(self, flow_id: str, tenant: str, user: str) -> str:
        if not user:
            log.warning("flow %s has no owner: its steps run without a flow token", flow_id)
            return ""
        flow = {"id": flow_id, "tenant": tenant, "owners": [{"id": user}]}
        return flow_tokens.ensure_flow_token(
            self._redis, self._issuer, flow, self._clock, key=self._key
        )

    def revoke(self, flow_id: str) -> None:
        flow_tokens.revoke_flow_token(self._redis, self._issuer, flow_id)


class NoFlowTokens:
    """IAM_URL unset: steps get no flow token (logged once at start)."""

    def ensure(self, flow_id: str, tenant: str, user: str) -> str:
        return ""

    def revoke(self, flow_id: str) -> None:
        return None


@dataclass
class DeployServices:
    driver: DeployDriver
    components: ComponentRepository
    tokens: FlowTokens
    worker: WorkerSettings
    credentials: QueueCredentials = field(default_factory=NoQueueCredentials)
    users: UserDirectory | None = None  # confirms the `startedBy` user admins name
    ready_wait_seconds: float = READY_WAIT_SECONDS
    ready_poll_seconds: float = READY_POLL_SECONDS
    lock_seconds: float = LOCK_SECONDS
    lock_wait_seconds: float = LOCK_WAIT_SECONDS
