"""`orchestrator backchannel`: ferryman's replies into step results (QUEUE_BACKEND=amqp,
docs/oih.md).

Every ferryman publishes on the `orchestrator_backchannel` exchange, echoing the message's
`orchestratorToken`: `.input` once per data message the action emits, `.error` when it threw,
`.step_state` ("function complete") when it is done with the message. We read them from our
queue on that exchange, in order, and post to the broker (K_SINK):

- `.input` → `step.completed` (final false), seq 0, 1, ... within that delivery;
- `.step_state` → the final `step.completed` (`empty`: it only ends the message's outputs),
  or nothing when an `.error` came first;
- `.error` → `step.failed` (final) with the error's name and message.

A reply is trusted only when its token is one we signed (shared/security/tokens.py) and still
valid: ferryman decodes it without checking, so a forged or altered token, or a reply without
one, is acknowledged, counted (`ignored`) and dropped. Run, message, attempt, flow, step and
tenant come from the verified claims only, never from headers a component could set; the
step token on the event is ours, minted for that run and step, so step-execute's fencing,
retries and timeouts work as for the Redis worker. The flow token (the claims' `apiKey`) never
leaves this module: no event, log line or error carries it.

Seqs are counted in Redis per delivery (run, message, attempt, ferryman's start time), keyed by
each reply's identity (`backchannel_seq.lua`): a reply read again after a crash gets the same
seq and event id (step-execute drops the resend), and a message ferryman took again after its
process died starts at seq 0 again (outputs seen before are dropped by messageId:seq).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudevents.http import CloudEvent
from redis import Redis

from shared import keys
from shared.clock import Clock
from shared.errors import OrchestratorError
from shared.events import types as t
from shared.events.envelope import EXT_FLOW_ID, EXT_RUN_ID, EXT_STEP_TOKEN, EXT_TENANT
from shared.ports import ferryman as names
from shared.ports.ferryman import BackchannelMessage
from shared.runtime import metrics
from shared.scripts import load_script
from shared.security import tokens
from shared.security.redact import redact_text, register_secret

log = logging.getLogger(__name__)

SEQ_TTL_SECONDS = 86400
# Ferryman publishes a failed message's `.error` through a rate limiter and its `.step_state`
# without one, so the end may come first: an end is held this long before it ends the message
# (an error arriving meanwhile wins). An error later than that comes too late to count.
END_GRACE_SECONDS = 1.0
_KINDS = {names.INPUT_KEY: "output", names.ERROR_KEY: "error", names.STATE_KEY: "end"}


@dataclass(frozen=True)
class Reply:
    """One verified reply: what it answers (from our token) and what it says."""

    kind: str  # output | error | end
    run_id: str
    message_id: str
    attempt: int
    flow_id: str
    step_id: str
    tenant: str
    delivery: str  # digest of (run, message, attempt, ferryman's start time)
    identity: str  # this reply within the delivery
    data: Any = None
    error: str | None = None


class Ignored(Exception):
    """A reply we cannot trust or use: `reason` for the log, `category` of a fixed set for the
    `orchestrator_backchannel_replies` series."""

    def __init__(self, reason: str, category: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.category = category


def _claims(key: str, message: BackchannelMessage, clock: Clock) -> dict[str, Any]:
    token = message.headers.get(names.TOKEN_HEADER)
    if isinstance(token, bytes):
        token = token.decode(errors="replace")
    if not isinstance(token, str) or not token:
        raise Ignored("no orchestratorToken", "no_token")
    try:
        claims = tokens.verify_orchestrator_token(key, token, clock)
    except OrchestratorError as exc:
        raise Ignored(f"token refused ({exc.message})", "token_refused") from None
    register_secret(str(claims.get("apiKey") or ""))  # masked should anything print it
    for name in (names.RUN_CLAIM, names.MESSAGE_CLAIM, "flowId", "stepId", "tenant"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise Ignored(f"token lacks {name}", "token_incomplete")
    if not isinstance(claims.get(names.ATTEMPT_CLAIM), int):
        raise Ignored(f"token lacks {names.ATTEMPT_CLAIM}", "token_incomplete")
    return claims


def _error_text(body: bytes) -> str:
    """`{"error": "<JSON of {name, message, stack}>", "errorInput": ...}` → `name: message`
    (the stack and the input stay out: they may hold the component's data)."""
    try:
        outer = json.loads(body)
        inner = outer.get("error") if isinstance(outer, dict) else None
        error = json.loads(inner) if isinstance(inner, str) else inner
        if isinstance(error, dict):
            text = f"{error.get('name') or 'Error'}: {error.get('message') or ''}"
        else:
            text = str(error or "step failed")
    except ValueError:
        text = "step failed (unreadable error reply)"
    return redact_text(text)[:1000]


def read_reply(key: str, message: BackchannelMessage, clock: Clock) -> Reply:
    """The verified reply; Ignored (with the reason) for anything we cannot trust or use."""
    kind = _KINDS.get(message.routing_key)
    if kind is None:
        raise Ignored(
            f"routing key {message.routing_key[:80]!r} is not a step reply", "not_a_reply"
        )
    claims = _claims(key, message, clock)
    run_id, message_id = claims[names.RUN_CLAIM], claims[names.MESSAGE_CLAIM]
    attempt = int(claims[names.ATTEMPT_CLAIM])
    start = str(message.headers.get("start", ""))
    delivery = keys.digest(run_id, message_id, str(attempt), start)
    emitted = str(message.headers.get("end", ""))
    identity = f"{kind}:{emitted}:{hashlib.sha256(message.body).hexdigest()[:24]}"
    data: Any = None
    error = None
    if kind == "output":
        try:
            body = json.loads(message.body)
        except ValueError:
            raise Ignored("output reply is not JSON", "not_json") from None
        data = body.get("data") if isinstance(body, dict) else body
    elif kind == "error":
        error = _error_text(message.body)
    return Reply(kind, run_id, message_id, attempt, claims["flowId"], claims["stepId"],
                 claims["tenant"], delivery, identity, data, error)  # fmt: skip


@dataclass
class Backchannel:
    """Turns replies into step events and hands them to `send` (TemporaryError: not now)."""

    redis: Redis
    key: str  # ORCHESTRATOR_KEY: verifies the replies' tokens, signs the events' step tokens
    clock: Clock
    send: Callable[[CloudEvent], None]
    step_token_seconds: float = 3600.0
    end_grace_seconds: float = END_GRACE_SECONDS
    ignored: Counter[str] = field(default_factory=Counter)
    sent: int = 0

    def event(self, reply: Reply) -> CloudEvent | None:
        seq_raw, state_raw = load_script("backchannel_seq")(
            self.redis,
            [keys.backchannel_outputs(reply.delivery)],
            [reply.identity, reply.kind, SEQ_TTL_SECONDS],
        )
        seq, state = (
            int(seq_raw),
            (state_raw.decode() if isinstance(state_raw, bytes) else state_raw),
        )
        if state == "errored":
            return None  # the `.error` before this end already ended the message
        payload: dict[str, Any] = {
            "runId": reply.run_id,
            "stepId": reply.step_id,
            "messageId": reply.message_id,
            "seq": seq,
            "final": reply.kind != "output",
            "attachments": [],
            "attempt": reply.attempt,
        }
        event_type = t.STEP_FAILED if reply.kind == "error" else t.STEP_COMPLETED
        if reply.kind == "output" and reply.data is not None:
            payload["data"] = reply.data
        if reply.kind == "end":
            payload["empty"] = True
        if reply.kind == "error":
            payload["error"] = reply.error
        suffix = {"output": str(seq), "error": "failed", "end": f"{seq}-end"}[reply.kind]
        step_token = tokens.sign_step_token(
            self.key, run_id=reply.run_id, step_id=reply.step_id, tenant=reply.tenant,
            flow_id=reply.flow_id, ttl_seconds=self.step_token_seconds, clock=self.clock,
        )  # fmt: skip
        attributes = {
            "type": event_type,
            "source": f"/component-orchestrator/worker/{reply.flow_id}/{reply.step_id}",
            "id": f"{reply.message_id}-{reply.attempt}-{reply.delivery[:12]}-{suffix}",
            "datacontenttype": "application/json",
            "dataschema": t.dataschema(event_type),
            EXT_TENANT: reply.tenant,
            EXT_FLOW_ID: reply.flow_id,
            EXT_RUN_ID: reply.run_id,
            EXT_STEP_TOKEN: step_token,
        }
        return CloudEvent({k: v for k, v in attributes.items() if v}, payload)

    def handle(self, message: BackchannelMessage, waited: bool = False) -> bool | float:
        """True: done with the message (acknowledge it); False: try again later; a number:
        hand it over again (`waited`) after that many seconds (an end, END_GRACE_SECONDS)."""
        try:
            reply = read_reply(self.key, message, self.clock)
        except Ignored as exc:
            self.ignored[exc.reason] += 1
            metrics.observe_backchannel_reply("ignored", exc.category)
            log.warning("backchannel: reply on %s ignored: %s", message.routing_key[:80],
                        exc.reason)  # fmt: skip
            return True
        if reply.kind == "end" and not waited and self.end_grace_seconds > 0:
            return self.end_grace_seconds
        event = self.event(reply)
        if event is None:
            return True
        try:
            self.send(event)
        except OrchestratorError as exc:
            if exc.status < 500:
                metrics.observe_backchannel_reply("refused")
                log.error("backchannel: %s of message %s refused: %s", t.short(event["type"]),
                          reply.message_id, exc.message)  # fmt: skip
                return True
            log.warning("backchannel: %s of message %s not delivered (%s): later",
                        t.short(event["type"]), reply.message_id, exc.message)  # fmt: skip
            metrics.observe_backchannel_reply("retried")
            return False
        self.sent += 1
        metrics.observe_backchannel_reply("sent")
        log.info("backchannel: %s (%s) of message %s (run %s)", t.short(event["type"]),
                 reply.kind, reply.message_id, reply.run_id)  # fmt: skip
        return True


class HttpSender:
    """Posts an event to the broker (K_SINK) in binary mode; 5xx/429/no answer: TemporaryError,
    another refusal: PermanentError (with the status)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        import requests

        self.url = url
        self.timeout = timeout
        self.http = requests.Session()

    def __call__(self, event: CloudEvent) -> None:
        import requests
        from cloudevents.conversion import to_binary

        from shared.errors import PermanentError, TemporaryError

        headers, body = to_binary(event)
        try:
            answer = self.http.post(self.url, headers=headers, data=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise TemporaryError(f"broker unreachable: {type(exc).__name__}") from exc
        if answer.status_code < 300:
            return
        if answer.status_code >= 500 or answer.status_code in (404, 408, 409, 429):
            raise TemporaryError(f"broker answered {answer.status_code}")
        refused = PermanentError(f"broker refused the event: {answer.status_code}")
        refused.status = answer.status_code
        raise refused


def run_backchannel(
    amqp_url: str,
    redis: Redis,
    key: str,
    clock: Clock,
    send: Callable[[CloudEvent], None],
    stop: Any,
    *,
    started: Callable[[Backchannel], None] | None = None,
) -> Backchannel:
    """Consumes until `stop` (a threading.Event) is set; returns the Backchannel (its counts)."""
    import threading

    from shared.adapters.rabbitmq import BackchannelConsumer

    backchannel = Backchannel(redis, key, clock, send)
    consumer = BackchannelConsumer(amqp_url)
    thread = threading.Thread(
        target=consumer.consume, args=(backchannel.handle,), name="backchannel", daemon=True
    )
    thread.start()
    if started is not None:
        started(backchannel)
    stop.wait()
    consumer.stop()
    thread.join(timeout=10)
    return backchannel
