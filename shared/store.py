"""The Redis connection and its start-up checks (DESIGN §5)."""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from shared.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)


class EvictionPolicyError(PermanentError):
    """Redis may evict keys: locks and leases would silently vanish."""


def connect(url: str) -> Redis:
    """A client (no I/O yet); bytes in, bytes out."""
    return Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )


def check_eviction_policy(redis: Redis) -> str | None:
    """Refuses all but `noeviction`; returns the policy, or None where CONFIG is forbidden."""
    try:
        reply = redis.config_get("maxmemory-policy")
    except ResponseError:
        log.warning(
            "CONFIG GET not allowed: cannot check maxmemory-policy; make sure it is noeviction"
        )
        return None
    except RedisError as exc:
        raise TemporaryError("redis unavailable") from exc
    values = {_text(k): _text(v) for k, v in dict(reply).items()}
    policy = values.get("maxmemory-policy")
    if policy != "noeviction":
        raise EvictionPolicyError(
            f"REDIS_URL: maxmemory-policy is {policy!r}; locks and leases need 'noeviction'"
        )
    return str(policy)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
