"""One IAM token per deployed flow (docs/architecture.md §8): created once, reused on redelivery,
revoked on stop.

The token goes only into the step Secret (outside the desired-state hash). Redis keeps the
IAM's token id and the token itself, encrypted with a key derived from ORCHESTRATOR_KEY, so a
redelivered flow.starting (or a reconcile) gets the same token back instead of a new one, and a
dump of Redis does not hand out working tokens.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis import Redis

from shared import keys
from shared.clock import Clock
from shared.errors import PermanentError, TemporaryError
from shared.store import as_text

log = logging.getLogger(__name__)

_KDF_INFO = b"component-orchestrator flow token at rest v1"


class FlowTokenIssuer(Protocol):
    """What shared.adapters.iam.IamClient offers (a protocol: tests count calls on a real one)."""

    def create_flow_token(self, flow_id: str, owner_id: str, tenant: str) -> tuple[str, str]: ...

    def revoke(self, token_id: str) -> None: ...


def _cipher(orchestrator_key: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO).derive(
        orchestrator_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def _field(obj: object, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def flow_owner(flow: object) -> str:
    """The flow's first owner: the account its token is created for."""
    owners = _field(flow, "owners") or ()
    owner_id = _field(owners[0], "id") if owners else None
    if not owner_id:
        raise PermanentError("flow has no owner to create its flow token for")
    return str(owner_id)


def ensure_flow_token(
    redis: Redis, iam: FlowTokenIssuer, flow: object, clock: Clock, *, key: str
) -> str:
    """The flow's token, created in IAM only if this flow has none (or its owner changed).

    `key` is ORCHESTRATOR_KEY. Safe under redelivery and concurrent calls: the first stored
    record wins, a token created by a loser of that race is revoked again.
    """
    flow_id = str(_field(flow, "id"))
    tenant = str(_field(flow, "tenant"))
    owner = flow_owner(flow)
    cipher = _cipher(key)
    record_key = keys.flow_token(flow_id)

    stored = _load(redis, record_key)
    if stored is not None:
        token = _decrypt(cipher, stored)
        if token is not None and stored.get("owner") == owner and stored.get("tenant") == tenant:
            return token
        # Owner/tenant changed, or ORCHESTRATOR_KEY was replaced: this token is not usable.
        iam.revoke(str(stored["id"]))
        redis.delete(record_key)

    token_id, token = iam.create_flow_token(flow_id, owner, tenant)
    record = {
        "id": token_id,
        "token": cipher.encrypt(token.encode()).decode(),
        "owner": owner,
        "tenant": tenant,
        "createdAt": clock.now(),
    }
    if redis.set(record_key, json.dumps(record), nx=True):
        return token
    # Someone stored a token for this flow meanwhile: keep theirs, withdraw ours.
    _revoke_quietly(iam, token_id)
    winner = _load(redis, record_key)
    winner_token = _decrypt(cipher, winner) if winner is not None else None
    if winner_token is None:
        raise TemporaryError("flow token changed while it was being created; retry")
    return winner_token


def revoke_flow_token(redis: Redis, iam: FlowTokenIssuer, flow_id: str) -> bool:
    """Revokes the flow's token in IAM, then forgets it. False if the flow had none."""
    record_key = keys.flow_token(flow_id)
    stored = _load(redis, record_key)
    if stored is None:
        return False
    iam.revoke(str(stored["id"]))  # TemporaryError leaves the record for the retry
    redis.delete(record_key)
    return True


def _load(redis: Redis, record_key: str) -> dict[str, Any] | None:
    raw = redis.get(record_key)
    if raw is None:
        return None
    try:
        record = json.loads(as_text(raw))
    except ValueError:
        record = None
    if not isinstance(record, dict) or "id" not in record:
        log.error("flow token record %s is corrupt; it will be replaced", record_key)
        redis.delete(record_key)
        return None
    return record


def _decrypt(cipher: Fernet, record: Mapping[str, Any]) -> str | None:
    try:
        return cipher.decrypt(str(record.get("token", "")).encode()).decode()
    except (InvalidToken, ValueError):
        return None


def _revoke_quietly(iam: FlowTokenIssuer, token_id: str) -> None:
    try:
        iam.revoke(token_id)
    except (TemporaryError, PermanentError) as exc:
        # The surplus token stays live in IAM: log its id (never the token) for an operator.
        log.warning("could not revoke surplus flow token id %s: %s", token_id, exc)


def stored_flow_token(redis: Redis, flow_id: str, *, key: str) -> str | None:
    """The flow's token as deploy stored it (None: none, or not readable with this key).
    Read-only: step-execute puts it into ferryman's messages (QUEUE_BACKEND=amqp)."""
    raw = redis.get(keys.flow_token(flow_id))
    try:
        record = json.loads(as_text(raw)) if raw is not None else None
    except ValueError:
        return None
    return _decrypt(_cipher(key), record) if isinstance(record, dict) else None
