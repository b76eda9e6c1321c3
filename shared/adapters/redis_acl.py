"""Redis ACL users, written to every node of the deployment we can reach.

ACL users are per server: Redis does not replicate `ACL SETUSER` (not even inside a Redis
Cluster). So a user is written to the node our client talks to and to each replica that node
reports (`INFO replication`), or, on a cluster, to every master and replica `CLUSTER NODES`
lists; after a failover the promoted replica already knows it, and the reconcile tick writes it
again to whatever the nodes are by then (docs/security.md, "Worker credentials").
Key patterns are exact keys with glob characters escaped: a user may touch nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from shared.errors import TemporaryError
from shared.store import as_text

log = logging.getLogger(__name__)

_GLOB = re.compile(r"([*?\[\]\\])")
_REPLICA = re.compile(r"^slave\d+$")


def exact_pattern(key: str) -> str:
    """An ACL key pattern that matches `key` alone."""
    return _GLOB.sub(r"\\\1", key)


def replicas_of(redis: Redis) -> list[Redis]:
    """Clients for the replicas `redis` reports, with its credentials (none if it reports none)."""
    try:
        info = redis.info("replication")
    except RedisError as exc:
        raise TemporaryError("redis unavailable (INFO replication)") from exc
    kwargs = redis.connection_pool.connection_kwargs
    clients = []
    for name, value in info.items():
        if not _REPLICA.match(str(name)) or not isinstance(value, dict):
            continue
        clients.append(
            Redis(
                host=as_text(value.get("ip")),
                port=int(value.get("port", 6379)),
                username=kwargs.get("username"),
                password=kwargs.get("password"),
                socket_timeout=5,
                socket_connect_timeout=2,
            )
        )
    return clients


# CLUSTER NODES flags of an entry that has no usable address (yet).
_UNREACHABLE_FLAGS = frozenset({"noaddr", "handshake"})


def cluster_members(redis: RedisCluster) -> list[Redis]:
    """A client for every master and replica of the cluster, as `CLUSTER NODES` lists them
    now (asked of one reachable node), with the cluster client's credentials."""
    try:
        reply: object = redis.cluster_nodes()
    except RedisError as exc:
        raise TemporaryError("redis unavailable (CLUSTER NODES)") from exc
    kwargs = redis.nodes_manager.connection_kwargs
    default = redis.get_default_node()  # type: ignore[no-untyped-call]
    clients = []
    for host, port in _addresses(reply, default.host if default else "127.0.0.1"):
        clients.append(
            Redis(
                host=host,
                port=port,
                username=kwargs.get("username"),
                password=kwargs.get("password"),
                socket_timeout=5,
                socket_connect_timeout=2,
            )
        )
    return clients


def _addresses(reply: object, fallback_host: str) -> list[tuple[str, int]]:
    """(host, port) of each node in a CLUSTER NODES reply: redis-py's parsed form
    ({"ip:port": {"flags": ...}}) or the raw text (one line per node)."""
    entries: list[tuple[str, str]] = []
    if isinstance(reply, dict):
        entries = [(as_text(a), as_text(d.get("flags", ""))) for a, d in reply.items()]
    else:
        for line in as_text(reply).splitlines():
            parts = line.split(" ")
            if len(parts) >= 3:
                entries.append((parts[1].split("@")[0], parts[2]))
    found: list[tuple[str, int]] = []
    for address, flags in entries:
        host, _, port = address.rpartition(":")
        if not port.isdigit() or int(port) == 0 or _UNREACHABLE_FLAGS & set(flags.split(",")):
            continue
        found.append((host or fallback_host, int(port)))
    return sorted(set(found))


class RedisAcl:
    """`AclAdmin` over plain clients; `nodes` is asked anew on every write."""

    def __init__(self, nodes: Callable[[], Sequence[Redis]]) -> None:
        self._nodes = nodes

    @classmethod
    def for_client(cls, redis: Redis) -> RedisAcl:
        """Every node of a cluster; else the node `redis` talks to and its replicas."""
        if isinstance(redis, RedisCluster):
            cluster = redis
            return cls(lambda: cluster_members(cluster))
        return cls(lambda: [redis, *replicas_of(redis)])

    def set_user(
        self,
        username: str,
        passwords: Sequence[str],
        keys: Sequence[str],
        commands: Sequence[str],
    ) -> int:
        # `reset` first: one SETUSER replaces every earlier rule, password and key atomically.
        # Only SHA-256 digests travel (what Redis keeps anyway): no password in MONITOR output.
        digests = ["+" + hashlib.sha256(p.encode()).hexdigest() for p in passwords]
        return self._each(
            "ACL SETUSER",
            lambda node: node.acl_setuser(
                username,
                enabled=True,
                reset=True,
                reset_channels=True,
                hashed_passwords=digests,
                categories=["-@all"],
                commands=[f"+{c}" for c in commands],
                keys=[exact_pattern(k) for k in keys],
            ),
        )

    def delete_user(self, username: str) -> int:
        return self._each("ACL DELUSER", lambda node: node.acl_deluser(username))

    def _each(self, operation: str, write: Callable[[Redis], object]) -> int:
        written, failures = 0, []
        for node in self._nodes():
            try:
                write(node)
                written += 1
            except ResponseError as exc:
                # NOPERM: our own user may not manage ACLs. An operator must fix that; until
                # then the event is retried (no flow runs with the orchestrator's rights).
                raise TemporaryError(
                    f"redis refused {operation} (the orchestrator's user needs +@admin): {exc}"
                ) from exc
            except RedisError as exc:
                failures.append(exc)
        if failures:
            log.warning("%s reached %d node(s), %d not (retried by reconcile)",
                        operation, written, len(failures))  # fmt: skip
        if written == 0 and failures:
            raise TemporaryError(f"redis unavailable ({operation})") from failures[0]
        return written
