"""A throwaway Redis server for one benchmark (helpers: `make bench` skips `_` modules)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
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
