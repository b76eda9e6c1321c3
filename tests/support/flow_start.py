"""Deprecated: use tests.support.function.FunctionHarness(flow_start.SPEC, ...) and the
builders in tests.support.flows. Kept only while tests written against it move over."""

from __future__ import annotations

from collections.abc import Mapping

from redis import Redis

from shared.clock import FakeClock
from shared.handlers.flow_start import SPEC, Services
from shared.model.policy import Policy
from tests.support.flows import flow_doc, policy
from tests.support.function import FunctionHarness

__all__ = ["FlowStart", "flow_doc", "policy"]


class FlowStart(FunctionHarness[Services]):
    def __init__(
        self,
        redis: Redis,
        clock: FakeClock,
        env: Mapping[str, str],
        *,
        policy: Policy | None = None,
        services: Services | None = None,
    ) -> None:
        super().__init__(SPEC, redis, clock, env, policy=policy, services=services)
