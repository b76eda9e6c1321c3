"""Redis ACL users, written to every node of the deployment we can reach.

ACL users are per server: Redis does not replicate `ACL SETUSER`. So a user is written to the
node our client talks to and to each replica that node reports (`INFO replication`); after a
failover the promoted replica already knows it, and the reconcile tick writes it again to
whatever the nodes are by then (docs/security.md, "Worker credentials").
Key patterns are exact keys with glob characters escaped: a user may touch nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence

from redis import Redis
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


class RedisAcl:
    """`AclAdmin` over plain clients; `nodes` is asked anew on every write."""

    def __init__(self, nodes: Callable[[], Sequence[Redis]]) -> None:
        self._nodes = nodes

    @classmethod
    def for_client(cls, redis: Redis) -> RedisAcl:
        """The node `redis` talks to and its replicas."""
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
