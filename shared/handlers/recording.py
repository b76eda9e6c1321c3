"""A handler that only records what it received: the wiring before the real logic lands."""

from __future__ import annotations

import json

from redis.client import Pipeline

from shared import keys
from shared.runtime import Context


def record_received(ctx: Context[object]) -> None:
    entry = json.dumps({"type": ctx.event.type, "id": ctx.event.id, "source": ctx.event.source})

    def write(pipe: Pipeline) -> None:
        pipe.rpush(keys.received(ctx.tag), entry)
        pipe.ltrim(keys.received(ctx.tag), -1000, -1)

    ctx.commit(write)


def no_services(*_: object) -> object:
    return object()
