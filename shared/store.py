"""The Redis connection and its start-up checks (docs/architecture.md §6; topologies:
docs/reliability.md, "Redis").

Three topologies, one client type for the code above (every key a script or transaction
touches together shares one hash tag, shared/keys.py, so the same calls work on all three):
- `standalone`: `REDIS_URL=redis://host:port/db` (or rediss://, unix://);
- `cluster`: `REDIS_MODE=cluster`, `REDIS_URL=redis://any-node:port` — redis-py's
  `RedisCluster` learns the other nodes and follows MOVED/ASK and failovers;
- `sentinel`: `REDIS_URL=redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`
  (or REDIS_MODE=sentinel) — redis-py's `Sentinel` asks the Sentinels for the service's
  master and asks again after a failover; the password is the master's.
"""

from __future__ import annotations

import logging
from typing import cast
from urllib.parse import unquote, urlparse

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError
from redis.sentinel import Sentinel, SentinelManagedSSLConnection

from shared.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)


class EvictionPolicyError(TemporaryError):
    """Redis may evict keys: locks and leases would silently vanish.

    A fault of the store, not of the event: should it surface while a request is handled
    (clients are built on first use), it answers 503 so the broker keeps the event for later
    instead of dead-lettering it as if it were malformed."""


MODES = ("standalone", "cluster", "sentinel")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def mode_of(url: str, mode: str | None = None) -> str:
    """The topology: as set, else `sentinel` for a redis+sentinel:// URL, else standalone."""
    if mode:
        return mode
    return "sentinel" if urlparse(url).scheme in SENTINEL_SCHEMES else "standalone"


def connect(
    url: str,
    mode: str | None = None,
    *,
    socket_timeout: float = 10,
    socket_connect_timeout: float = 5,
) -> Redis:
    """A client (no I/O yet); bytes in, bytes out. A cluster client is typed as `Redis`: it
    offers the same commands, scripts and same-slot transactions the code uses."""
    kind = mode_of(url, mode)
    if kind == "cluster":
        return cast(
            Redis,
            RedisCluster.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
                health_check_interval=30,
            ),
        )
    if kind == "sentinel":
        return _sentinel_master(url, socket_timeout, socket_connect_timeout)
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        health_check_interval=30,
    )


def _sentinel_master(url: str, socket_timeout: float, connect_timeout: float) -> Redis:
    parsed = urlparse(url)
    hosts: list[tuple[str, int]] = []
    for part in parsed.netloc.rpartition("@")[2].split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise PermanentError(f"REDIS_URL: sentinel address {part!r} is not host:port")
        hosts.append((host, int(port)))
    path = [p for p in parsed.path.split("/") if p]
    if not path:
        raise PermanentError("REDIS_URL: a sentinel URL names the service: .../<service>[/db]")
    service, db = path[0], int(path[1]) if len(path) > 1 and path[1].isdigit() else 0
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        socket_timeout=min(socket_timeout, 2),
        socket_connect_timeout=connect_timeout,
    )
    tls: dict[str, object] = (
        {"connection_class": SentinelManagedSSLConnection}
        if parsed.scheme.startswith("rediss")
        else {}
    )
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        service,
        db=db,
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=30,
        **tls,
    )
    return cast(Redis, master)


def slot_client(redis: Redis, key: str) -> Redis:
    """The plain client of the node serving `key`'s slot (the client itself off a cluster):
    for pipelines of scripts, which a cluster pipeline refuses. Every key in such a pipeline
    must share the key's hash tag; a moved slot fails the batch with a retried error."""
    if isinstance(redis, RedisCluster):
        node = redis.get_node_from_key(key)
        connection = redis.get_redis_connection(node)
        return connection
    return redis


class NotReplicated(TemporaryError):
    """Fewer replicas than asked hold the writes yet: answered 503, the redelivery finds its
    own writes done (dedupe) and waits again."""


def wait_for_replicas(redis: Redis, probe_key: str, replicas: int, timeout_seconds: float) -> int:
    """Blocks until `replicas` replicas hold every write made so far to `probe_key`'s node.

    WAIT only covers the writes of the connection it runs on, and a pooled client writes on
    many: a probe written on the same connection right before WAIT comes after all of them in
    the replication stream, so waiting for the probe waits for them all."""
    node = slot_client(redis, probe_key)
    pipe = node.pipeline(transaction=False)
    pipe.set(probe_key, "1", px=60_000)
    pipe.wait(replicas, max(1, int(timeout_seconds * 1000)))
    try:
        _, acked = pipe.execute()
    except RedisError as exc:
        raise TemporaryError("redis unavailable (waiting for replicas)") from exc
    if int(acked) < replicas:
        raise NotReplicated(f"redis: {acked} of {replicas} replicas hold the writes yet")
    return int(acked)


def check_at_start(url: str, mode: str | None = None) -> None:
    """Refuses to start on an evicting Redis when it answers quickly; an unreachable one is
    checked again when the clients are built on first use."""
    try:
        probe = connect(url, mode, socket_timeout=2, socket_connect_timeout=1)
    except RedisError:  # a cluster client asks its nodes at once
        log.warning("redis not reachable at start; maxmemory-policy is checked on first use")
        return
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
        if isinstance(redis, RedisCluster):  # every node: one evicting master is enough harm
            reply = redis.config_get("maxmemory-policy", target_nodes=RedisCluster.ALL_NODES)
        else:
            reply = redis.config_get("maxmemory-policy")
    except ResponseError:
        log.warning(
            "CONFIG GET not allowed: cannot check maxmemory-policy; make sure it is noeviction"
        )
        return None
    except RedisError as exc:
        raise TemporaryError("redis unavailable") from exc
    policy = _policy_of(reply)
    if policy != "noeviction":
        raise EvictionPolicyError(
            f"REDIS_URL: maxmemory-policy is {policy!r}; locks and leases need 'noeviction'"
        )
    return str(policy)


def _policy_of(reply: object) -> str | None:
    """CONFIG GET's reply; a cluster client answers per node: all must be noeviction."""
    values = {as_text(k): v for k, v in dict(reply).items()}  # type: ignore[call-overload]
    if "maxmemory-policy" in values:
        return as_text(values["maxmemory-policy"])
    policies = {_policy_of(v) for v in values.values() if isinstance(v, dict)}
    if len(policies) == 1:
        return policies.pop()
    return ",".join(sorted(str(p) for p in policies)) or None


def as_text(value: object) -> str:
    """A Redis reply item as text (clients here do not decode responses: values may be bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
