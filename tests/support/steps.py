"""Deprecated: use tests.support.function.FunctionHarness(step_execute.SPEC, ...,
policy=fast_policy()) and the builders in tests.support.flows. Kept only while tests written
against it move over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis import Redis

from shared.clock import FakeClock
from shared.handlers.step_execute import SPEC, StepExecuteServices
from shared.model.policy import Policy
from tests.support.flows import TENANT, USER, fast_policy, flow_document
from tests.support.function import FunctionHarness

__all__ = ["TENANT", "USER", "StepHarness", "fast_policy", "flow_document"]


class StepHarness(FunctionHarness[StepExecuteServices]):
    def __init__(
        self,
        redis: Redis,
        clock: FakeClock,
        env: Mapping[str, str],
        *,
        policy: Policy | None = None,
        services: StepExecuteServices | None = None,
    ) -> None:
        super().__init__(SPEC, redis, clock, env, policy=policy or fast_policy(), services=services)

    def admit(  # type: ignore[override]
        self,
        flow_id: str,
        run_id: str = "run-1",
        msg: Any = None,
        *,
        tenant: str = TENANT,
        user: str = USER,
        fencing: int = 7,
    ) -> dict[str, Any]:
        return super().admit(
            flow_id, run_id, {} if msg is None else msg, tenant=tenant, user=user, fencing=fencing
        )
