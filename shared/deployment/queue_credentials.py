"""Queue credentials for a flow's step workers: never the orchestrator's own.

A worker runs a tenant's code, so whatever its Secret holds, that tenant holds. With Redis
Streams each deployed flow gets one ACL user (`co-flow-<flow id>`) that may run only the
stream commands a worker sends, on only that flow's step queues (shared/ports/queue_access.py).

- Passwords are derived, never stored: HMAC of (flow id, generation) under a key derived from
  ORCHESTRATOR_KEY. Redis keeps only the generation (`keys.queue_credentials`), the
  desired-state hash only the generation's number (a Secret variable, so a rotation rolls the
  pods), and the password enters the Secret at apply time, like the flow token.
- Rotation: every deploy that changes what runs takes the next generation. The user accepts
  the new and the previous password, so pods still rolling keep consuming.
- Deploy writes the user to every node it can reach (on a Redis Cluster every master and
  replica), reconcile writes it again on every pass (ACL users are not replicated), stop
  deletes it. On a cluster the user may also ask for the slot map and the command table,
  which the worker's cluster client needs (shared/ports/queue_access.py).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Protocol
from urllib.parse import quote, urlparse, urlunparse

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis import Redis

from shared import keys
from shared.ports import ferryman
from shared.ports.ferryman import FlowQueueAdmin
from shared.ports.queue_access import CLUSTER_WORKER_COMMANDS, WORKER_COMMANDS, AclAdmin

USERNAME_PREFIX = "co-flow-"
_KDF_INFO = b"component-orchestrator worker queue password v1"


class QueueCredentials(Protocol):
    def generation(self, flow_id: str) -> int | None:
        """The flow's current credentials generation (0: none yet); None: no credentials."""
        ...

    def rotate(self, flow_id: str) -> int | None:
        """Takes the next generation (None: this backend has no credentials)."""
        ...

    def grant(self, flow_id: str, queues: Sequence[str], generation: int) -> dict[str, str]:
        """Writes the flow's user for `queues`; returns the Secret variables that carry it."""
        ...

    def revoke(self, flow_id: str) -> None: ...

    def consumers(self, flow_id: str, step_id: str) -> int | None:
        """Processes consuming the step's queue (None: this backend does not count them; a
        step is then Ready when its processes are)."""
        ...


class NoQueueCredentials:
    """Backends whose workers authenticate otherwise (SQS: the pod's IAM role, IRSA)."""

    def generation(self, flow_id: str) -> int | None:
        return None

    def rotate(self, flow_id: str) -> int | None:
        return None

    def grant(self, flow_id: str, queues: Sequence[str], generation: int) -> dict[str, str]:
        return {}

    def revoke(self, flow_id: str) -> None:
        return None

    def consumers(self, flow_id: str, step_id: str) -> int | None:
        return None


def username(flow_id: str) -> str:
    return USERNAME_PREFIX + flow_id  # flow ids are [A-Za-z0-9._:-]: a valid ACL name


def worker_url(base_url: str, user: str, password: str) -> str:
    """`base_url` (the orchestrator's REDIS_URL or WORKER_REDIS_URL) with only these credentials."""
    parsed = urlparse(base_url)
    address = parsed.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{address}"
    return urlunparse(parsed._replace(netloc=netloc))


class RedisQueueCredentials:
    def __init__(
        self,
        redis: Redis,
        acl: AclAdmin,
        orchestrator_key: str,
        base_url: str,
        *,
        cluster: bool = False,
    ) -> None:
        self._redis, self._acl, self._base_url = redis, acl, base_url
        self._commands = CLUSTER_WORKER_COMMANDS if cluster else WORKER_COMMANDS
        self._secret = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO).derive(
            orchestrator_key.encode()
        )

    def password(self, flow_id: str, generation: int) -> str:
        message = f"{flow_id}\x1f{generation}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def generation(self, flow_id: str) -> int | None:
        raw = self._redis.get(keys.queue_credentials(flow_id))
        return int(raw) if raw is not None else 0

    def rotate(self, flow_id: str) -> int | None:
        return int(self._redis.incr(keys.queue_credentials(flow_id)))

    def grant(self, flow_id: str, queues: Sequence[str], generation: int) -> dict[str, str]:
        generation = max(generation, 1)
        passwords = [self.password(flow_id, g) for g in (generation, generation - 1) if g >= 1]
        self._acl.set_user(username(flow_id), passwords, sorted(set(queues)), self._commands)
        current = passwords[0]
        return {"REDIS_URL": worker_url(self._base_url, username(flow_id), current)}

    def revoke(self, flow_id: str) -> None:
        self._acl.delete_user(username(flow_id))
        self._redis.delete(keys.queue_credentials(flow_id))

    def consumers(self, flow_id: str, step_id: str) -> int | None:
        return None


class AmqpQueueCredentials(RedisQueueCredentials):
    """QUEUE_BACKEND=amqp: per flow one RabbitMQ user (`co-flow-<flow id>`) that may consume
    only the flow's own steps' queues and publish only to the backchannel and the flow's own
    exchange (OIH's rule, shared/ports/ferryman.py); its password derives like the Redis
    user's (never stored) and reaches the Secret as ferryman's ELASTICIO_AMQP_URI. Granting
    also declares the flow's exchange, queues and bindings (idempotent, on every reconcile).
    RabbitMQ keeps one password per user: a rotation takes effect at once, and pods still
    rolling reconnect with the new Secret."""

    def __init__(
        self, redis: Redis, admin: FlowQueueAdmin, orchestrator_key: str, base_url: str
    ) -> None:
        super().__init__(redis, _NoAcl(), orchestrator_key, base_url)
        self._admin = admin

    def grant(self, flow_id: str, queues: Sequence[str], generation: int) -> dict[str, str]:
        generation = max(generation, 1)
        steps = sorted({parsed[1] for q in queues if (parsed := keys.parse_step_queue(q))})
        password = self.password(flow_id, generation)
        self._admin.grant(flow_id, steps, ferryman.user_name(flow_id), password)
        url = amqp_url_with(self._base_url, ferryman.user_name(flow_id), password)
        return {ferryman.AMQP_URI_VARIABLE: url}

    def revoke(self, flow_id: str) -> None:
        self._admin.revoke(flow_id, ferryman.user_name(flow_id))
        self._redis.delete(keys.queue_credentials(flow_id))

    def consumers(self, flow_id: str, step_id: str) -> int | None:
        """A ferryman is Ready once it consumes its queue, not when its process is alive."""
        return self._admin.consumers(flow_id, step_id)


class _NoAcl:
    def set_user(self, username: str, passwords: Sequence[str], keys: Sequence[str],
                 commands: Sequence[str]) -> int:  # fmt: skip
        return 0

    def delete_user(self, username: str) -> int:
        return 0


def amqp_url_with(base_url: str, user: str, password: str) -> str:
    """`base_url` (WORKER_AMQP_URL or AMQP_URL) with only the flow user's credentials."""
    return worker_url(base_url, user, password)


def secret_values(token: str, credentials: Mapping[str, str]) -> dict[str, str]:
    """What a flow's Secrets get at apply time (outside the desired-state hash)."""
    values = dict(credentials)
    if token:
        values["FLOW_TOKEN"] = token
    return values
