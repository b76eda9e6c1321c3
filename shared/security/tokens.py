"""HS256 tokens signed with ORCHESTRATOR_KEY: step tokens and our own inter-function tokens.

These are always checked, whatever ORCHESTRATOR_AUTH says (docs/architecture.md §8).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from jose import JWTError, jwt

from shared.clock import Clock
from shared.errors import Forbidden, Unauthorized

ISSUER = "component-orchestrator"
ALGORITHM = "HS256"
INTERNAL_TOKEN_SECONDS = 300  # exp ≤ 5 min: a stolen internal token is short-lived
STEP_AUDIENCE = "component-orchestrator/step"
INTERNAL_AUDIENCE = "component-orchestrator/internal"
# The claim naming the one CloudEvent type an internal token may carry.
EVENT_TYPE_CLAIM = "evt"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepClaims:
    run_id: str
    step_id: str
    tenant: str
    flow_id: str


def _decode(key: str, token: str, audience: str, clock: Clock) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except JWTError as exc:
        raise Unauthorized("token is malformed") from exc
    if header.get("alg") != ALGORITHM:
        raise Unauthorized(f"token algorithm must be {ALGORITHM}")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=ISSUER,
            # Time is checked below with the injected clock; aud and iss must be present, so a
            # token minted for one purpose (step, internal) never passes as the other.
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "require_aud": True,
                "require_iss": True,
            },
        )
    except JWTError as exc:
        raise Unauthorized("token signature, issuer or audience is invalid") from exc
    now = clock.now()
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or now >= exp:
        raise Unauthorized("token has expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and now < nbf - 5:
        raise Unauthorized("token is not valid yet")
    return claims


def sign_internal(key: str, sender: str, clock: Clock, *, event_type: str) -> str:
    """The `authtoken` our functions put on events of `event_type` they send each other.

    The token names the one event type it may carry, so a token seen on one event (in a
    broker's log, a dead letter) cannot be replayed onto an event of another type. A sender
    batching events signs one token per (batch, event type) and puts it on each of them.
    """
    if not event_type:
        raise ValueError("an internal token is signed for one event type")
    now = int(clock.now())
    claims = {
        "iss": ISSUER,
        "sub": sender,
        "aud": INTERNAL_AUDIENCE,
        EVENT_TYPE_CLAIM: event_type,
        "iat": now,
        "nbf": now,
        "exp": now + INTERNAL_TOKEN_SECONDS,
    }
    return str(jwt.encode(claims, key, algorithm=ALGORITHM))


def keyed_event_id(key: str, source: str, event_id: str) -> str:
    """The id an emitted event carries on the wire: an HMAC (ORCHESTRATOR_KEY) of the id it
    was staged with. Staged ids are predictable (`<run>-admitted`, `run-end-<run>`) and the
    same on every resend; the keyed id is too, but nobody without the key can compute it, so
    nobody can pre-empt one of our events at a receiver that dedupes by (source, id)."""
    mac = hmac.new(key.encode(), f"event-id\x1f{source}\x1f{event_id}".encode(), hashlib.sha256)
    return "co-" + mac.hexdigest()[:32]


def verify_internal(
    key: str, token: str, clock: Clock, *, event_type: str, accept_untyped: bool = True
) -> str:
    """Returns the sending function's name if the token is ours, valid now and signed for
    `event_type`; raises Unauthorized (not ours, expired) or Forbidden (another type).

    `accept_untyped` lets a token of the previous release (no event type claim) through, so
    events in flight during a rolling upgrade are not refused; such tokens live at most
    INTERNAL_TOKEN_SECONDS, and the next release stops accepting them (CHANGELOG.md).
    """
    claims = _decode(key, token, INTERNAL_AUDIENCE, clock)
    sender = claims.get("sub")
    if not isinstance(sender, str) or not sender:
        raise Unauthorized("internal token names no sender")
    signed_for = claims.get(EVENT_TYPE_CLAIM)
    if signed_for is None:
        if not accept_untyped:
            raise Unauthorized("internal token names no event type")
        log.info("internal token of %s without an event type (previous release)", sender)
        return sender
    if signed_for != event_type:
        raise Forbidden("internal token was signed for another event type")
    return sender


def sign_step_token(
    key: str,
    *,
    run_id: str,
    step_id: str,
    tenant: str,
    flow_id: str,
    ttl_seconds: float,
    clock: Clock,
) -> str:
    now = int(clock.now())
    claims = {
        "iss": ISSUER,
        "aud": STEP_AUDIENCE,
        "sub": f"{run_id}/{step_id}",
        "run": run_id,
        "step": step_id,
        "tenant": tenant,
        "flow": flow_id,
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl_seconds),
    }
    return str(jwt.encode(claims, key, algorithm=ALGORITHM))


def verify_step_token(
    key: str, token: str, clock: Clock, *, run_id: str | None = None, step_id: str | None = None
) -> StepClaims:
    """Checks signature and expiry, then that the token names this run and step (403 if not)."""
    claims = _decode(key, token, STEP_AUDIENCE, clock)
    try:
        step = StepClaims(
            run_id=str(claims["run"]),
            step_id=str(claims["step"]),
            tenant=str(claims["tenant"]),
            flow_id=str(claims["flow"]),
        )
    except KeyError as exc:
        raise Unauthorized(f"step token lacks claim {exc.args[0]}") from exc
    if run_id is not None and step.run_id != run_id:
        raise Forbidden("step token belongs to another run")
    if step_id is not None and step.step_id != step_id:
        raise Forbidden("step token belongs to another step")
    return step


FERRYMAN_AUDIENCE = "component-orchestrator/ferryman"


def sign_orchestrator_token(
    key: str, claims: dict[str, Any], *, ttl_seconds: float, clock: Clock
) -> str:
    """The `orchestratorToken` header of a ferryman step message (docs/oih.md): ferryman's
    claims (flowId, stepId, userId, tenant, function, fields, nodeSettings, apiKey, secretId)
    and ours (runId, messageId, attempt), signed, so the backchannel can tell a reply that
    echoes our token from a forged one (ferryman decodes it without checking)."""
    now = int(clock.now())
    body = {
        **claims,
        "iss": ISSUER,
        "aud": FERRYMAN_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl_seconds),
    }
    return str(jwt.encode(body, key, algorithm=ALGORITHM))


def verify_orchestrator_token(key: str, token: str, clock: Clock) -> dict[str, Any]:
    """The claims of an `orchestratorToken` we signed and that is still valid; Unauthorized
    otherwise (not ours, altered, expired, another purpose's token)."""
    return _decode(key, token, FERRYMAN_AUDIENCE, clock)
