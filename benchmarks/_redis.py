"""A throwaway Redis server for one benchmark (helpers: `make bench` skips `_` modules)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis

from shared.local.embedded_redis import EmbeddedRedis


@contextmanager
def redis_server() -> Iterator[Redis]:
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedRedis(Path(folder), persist=False).start()
        try:
            client = Redis.from_url(server.url)
            yield client
            client.close()
        finally:
            server.stop()


def used_memory(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])


def bytes_per_flow(redis: Redis, populate: Callable[[int], object], flows: int) -> float:
    """Redis bytes per scheduled flow, measured one way for every system: INFO used_memory of
    an empty database (scripts loaded by a first `populate(1)`), then `populate(flows)` writing
    every key the system keeps per scheduled flow, delta / flows. Leaves the flows in place."""
    redis.flushall()
    populate(1)  # loads scripts, creates the shared keys (their fixed cost is not per flow)
    redis.flushall()
    before = used_memory(redis)
    populate(flows)
    return (used_memory(redis) - before) / flows
