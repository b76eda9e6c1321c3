"""Building a FunctionRuntime in tests, with real Redis and a fake clock.

runtime = make_runtime(SPEC, redis, clock, base_env)            # CapturingSender
runtime = make_runtime(recording_spec("deploy"), redis, clock, base_env)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from redis import Redis
from redis.client import Pipeline

from shared import keys
from shared.clock import Clock
from shared.events.types import CONSUMES
from shared.model import flows
from shared.model.policy import Policy, load_policy
from shared.runtime.auth import Authorizer
from shared.runtime.function import Context, FunctionRuntime, FunctionSpec, Handler
from shared.runtime.outbox import EventSender
from shared.settings import Settings
from tests.support.events import CapturingSender

TAG_OF = {
    "flow-start": keys.ADMISSION,
    "deploy": keys.DEPLOY,
    "step-execute": keys.EXECUTION,
    "policy-check": keys.POLICY,
}


def make_runtime(
    spec: FunctionSpec[Any],
    redis: Redis,
    clock: Clock,
    env: Mapping[str, str],
    sender: EventSender | None = None,
    services: Any = None,
    *,
    policy: Policy | None = None,
    authorizer: Authorizer | None = None,
) -> FunctionRuntime[Any]:
    """A runtime as `FunctionRuntime.from_env` builds it, but with the test's clients.

    `sender` defaults to a CapturingSender (reach it as `runtime.sender`); `services` defaults
    to what the spec's `build_services` returns.
    """
    settings = Settings.from_env(env)
    return FunctionRuntime(
        spec,
        settings=settings,
        redis=redis,
        clock=clock,
        policy=policy if policy is not None else load_policy(settings.policy_file),
        sender=sender if sender is not None else CapturingSender(),
        authorizer=authorizer
        or Authorizer(settings, clock, flow_tenant=lambda flow_id: flows.tenant_of(redis, flow_id)),
        services=services if services is not None else spec.build_services(settings, clock, redis),
    )


# --- a handler that records what it receives (for wiring and dedupe tests) -------------------
def received_key(tag: str) -> str:
    """Where a recording handler of this tag writes (a test-only key in the tag's slot)."""
    return f"{keys.PREFIX}{{{tag}}}:test:received"


def recorded(redis: Redis, tag: str) -> list[dict[str, Any]]:
    """What a recording handler of this tag committed, oldest first."""
    return [json.loads(raw) for raw in redis.lrange(received_key(tag), 0, -1)]


def record(ctx: Context[Any], emit: Callable[[Context[Any]], list[Any]] | None = None) -> None:
    entry = json.dumps({"type": ctx.event.type, "id": ctx.event.id, "source": ctx.event.source})

    def write(pipe: Pipeline) -> None:
        pipe.rpush(received_key(ctx.tag), entry)

    ctx.commit(write, emit(ctx) if emit else [])


def recording_spec(
    function: str,
    handler: Handler[Any] | None = None,
    *,
    handlers: Mapping[str, Handler[Any]] | None = None,
) -> FunctionSpec[Any]:
    """A FunctionSpec for `function` whose every consumed type goes to `handler` (default:
    record the event in `received_key(tag)`); `handlers` overrides single types."""
    chosen: Handler[Any] = handler or record
    table: dict[str, Handler[Any]] = dict.fromkeys(CONSUMES[function], chosen)
    table.update(handlers or {})
    return FunctionSpec(
        name=function, tag=TAG_OF[function], handlers=table, build_services=lambda *_: None
    )
