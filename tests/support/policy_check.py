"""Deprecated: use tests.support.function.FunctionHarness(policy_check.SPEC, ...) and the
builders in tests.support.flows. Kept only while tests written against it move over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis import Redis

from shared.clock import FakeClock
from shared.handlers.policy_check import SPEC
from shared.model.policy import Policy
from shared.wiring.policing import PolicyServices
from tests.support.flows import store_flow
from tests.support.function import FunctionHarness

__all__ = ["PolicyCheck", "store_flow"]


class PolicyCheck(FunctionHarness[PolicyServices]):
    def __init__(
        self,
        redis: Redis,
        clock: FakeClock,
        env: Mapping[str, str],
        *,
        policy: Policy | None = None,
        services: PolicyServices | None = None,
    ) -> None:
        super().__init__(SPEC, redis, clock, env, policy=policy, services=services)

    def admit(  # type: ignore[override]
        self, flow_id: str = "f1", *, token: int = 1, **kw: Any
    ) -> dict[str, Any]:
        return super().admit(flow_id, fencing=token, **kw)
