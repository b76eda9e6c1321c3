"""Who may read a step queue: the access-control side of a queue backend.

With Redis Streams each deployed flow gets its own ACL user that may touch only that flow's
step queues with only the commands a worker sends (shared/adapters/redis_acl.py). The
deployment side (shared/deployment/queue_credentials.py) decides names, passwords and
rotation; an adapter only writes what it is given to every node it can reach.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

from shared import keys

# What shared/adapters/redis_streams.py sends from a worker: receive (XREADGROUP, and
# XGROUP CREATE when the stream or group is new), ack (XACK + XDEL), and the client's PING.
WORKER_COMMANDS: tuple[str, ...] = ("xreadgroup", "xack", "xdel", "xgroup|create", "ping")
# On a Redis Cluster a worker's client (redis-py's RedisCluster) also learns the slot map
# (CLUSTER SLOTS, again after a MOVED) and the command table (COMMAND, to find a command's
# keys). Neither reads or changes data: they show node addresses and command names.
CLUSTER_WORKER_COMMANDS: tuple[str, ...] = (*WORKER_COMMANDS, "cluster|slots", "command")


class AclAdmin(Protocol):
    def set_user(
        self,
        username: str,
        passwords: Sequence[str],
        keys: Sequence[str],
        commands: Sequence[str],
    ) -> int:
        """Creates or replaces the user on every node; returns how many nodes took it.

        Raises TemporaryError when no node could be written."""
        ...

    def delete_user(self, username: str) -> int:
        """Removes the user from every node it can reach (absent is fine)."""
        ...


# ---- SQS: names the queue adapter uses and a flow's IAM policy must name the same way ------
def sqs_name(queue: str) -> str:
    """`co:q:{flow}:node` → `co-q-flow-node-<digest>` (SQS: 80 of [A-Za-z0-9_-]). The digest
    makes names exact: a policy lists each queue's ARN, never a prefix another flow could
    share (`flow-a` is a prefix of `flow-ab`)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", queue).strip("-")
    return f"{safe[:63]}-{keys.digest(queue)[:16]}"


def claim_check_prefix(flow_id: str) -> str:
    """Where the bodies of a flow's big step messages go in CLAIM_CHECK_BUCKET; flow ids hold
    no `/`, so no flow's prefix contains another's."""
    return f"claim-check/{flow_id}/"


class WorkerRoles(Protocol):
    """A flow's IAM role for its workers (SQS with IRSA): created or brought up to date with
    the given trust and identity policies, or deleted (shared/adapters/aws_iam.py)."""

    def ensure(
        self,
        name: str,
        *,
        path: str,
        trust_policy: dict[str, Any],
        policy: dict[str, Any],
        boundary: str | None,
    ) -> None:
        """Raises TemporaryError when IAM cannot answer, PermanentError when it refuses."""
        ...

    def delete(self, name: str) -> None:
        """Absent is fine."""
        ...
