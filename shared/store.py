"""The Redis connection and its start-up checks (docs/architecture.md §6)."""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from shared.errors import TemporaryError

log = logging.getLogger(__name__)


class EvictionPolicyError(TemporaryError):
    """Redis may evict keys: locks and leases would silently vanish.

    A fault of the store, not of the event: should it surface while a request is handled
    (clients are built on first use), it answers 503 so the broker keeps the event for later
    instead of dead-lettering it as if it were malformed."""


def connect(url: str) -> Redis:
    """A client (no I/O yet); bytes in, bytes out."""
    return Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )


def check_at_start(url: str) -> None:
    """Refuses to start on an evicting Redis when it answers quickly; an unreachable one is
    checked again when the clients are built on first use."""
    probe = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    try:
        check_eviction_policy(probe)
    except EvictionPolicyError:
        raise
    except TemporaryError:
        log.warning("redis not reachable at start; maxmemory-policy is checked on first use")
    finally:
        probe.close()


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
