"""Who sent this event, and may they? The one authorization seam of every function
(docs/architecture.md §8).

| event type                       | must carry                | checked with                |
|----------------------------------|---------------------------|-----------------------------|
| flow.starting/stopping/execute,  | `authtoken` (IAM token)   | IamVerifier; tenant and     |
| component.starting/stopping      |                           | permission (skipped if off) |
| step.completed / step.failed     | `steptoken`               | security.tokens, always     |
| orchestrator.tick                | nothing                   | -                           |
| everything else (our own events) | `authtoken` (ours, HS256) | security.tokens, always     |

Control events and step results may not claim a source of ours (`/component-orchestrator/...`,
except the worker runtime's `/component-orchestrator/worker/...` on step results): 403.
Refusals raise Unauthorized (401: missing, bad or expired token) or Forbidden (403: valid, but
not allowed) before any handler runs, so nothing happens. The IAM being unreachable raises
TemporaryError (503). Payloads are read duck-typed (attribute or mapping, camelCase or
snake_case), so this module does not depend on the payload classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from cloudevents.http import CloudEvent

from shared.adapters.iam import IamIdentity, IamVerifier, is_admin
from shared.clock import Clock
from shared.errors import Forbidden, InvalidEvent, Unauthorized
from shared.events import types as t
from shared.events.envelope import EXT_AUTH_TOKEN, EXT_STEP_TOKEN
from shared.model.flows import unknown_flow
from shared.security import tokens
from shared.settings import Settings

log = logging.getLogger(__name__)

FLOWS_CONTROL = "flows.control"
COMPONENTS_CONTROL = "components.control"
# Sources our functions (and the worker runtime) put on the events they send.
OUR_SOURCE_PREFIX = "/component-orchestrator/"
WORKER_SOURCE_PREFIX = OUR_SOURCE_PREFIX + "worker/"

PrincipalKind = Literal["iam", "internal", "step", "anonymous", "auth-off"]


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    subject: str  # IAM sub / sending function / run/step
    tenant: str | None
    permissions: frozenset[str]
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        """An IAM admin: the permission `all` (the role `ADMIN` for one more release)."""
        return self.kind == "iam" and is_admin(self.permissions, self.roles)

    @property
    def scope(self) -> str:
        """Who this is, for dedupe keys: events of different callers never collide."""
        return f"{self.kind}\x1f{self.tenant or ''}\x1f{self.subject}"


ANONYMOUS = Principal("anonymous", "anonymous", None, frozenset(), frozenset())
AUTH_OFF = Principal("auth-off", "auth-off", None, frozenset(), frozenset())


class AnsweredAsUnknown(Exception):
    """The event names another tenant's flow and must get the answer an unknown id gets
    (success, nothing done): the runtime skips the handler and answers as for any event."""


def payload_field(payload: object, *names: str) -> str | None:
    """The first present, non-empty field among `names`, from a dataclass or a mapping."""
    for name in names:
        value = payload.get(name) if isinstance(payload, Mapping) else getattr(payload, name, None)
        if value is not None and value != "":
            return str(value)
    return None


def _refuse_our_source(event: CloudEvent, allowed: str | None = None) -> None:
    """Events from outside (control events, step results) may not claim to come from one of
    our functions: receivers and the hub trust a `/component-orchestrator/...` source as ours.
    Step results may name the worker source our worker runtime uses."""
    source = str(event.get("source") or "")
    if source.startswith(OUR_SOURCE_PREFIX) and not (allowed and source.startswith(allowed)):
        raise Forbidden(f"source: {OUR_SOURCE_PREFIX}... is reserved for the orchestrator")


def _extension(event: CloudEvent, name: str) -> str | None:
    value = event.get(name)
    return str(value) if value else None


class Authorizer:
    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        verifier: IamVerifier | None = None,
        flow_tenant: Callable[[str], str | None],
    ) -> None:
        self._key = settings.orchestrator_key
        self._clock = clock
        self._flow_tenant = flow_tenant
        self._auth_required = settings.auth_required
        self._verifier: IamVerifier | None = None
        if self._auth_required:
            # Built here so a missing IAM setting stops the function at start, not per request.
            self._verifier = verifier or IamVerifier.from_settings(settings, clock)
        else:
            log.warning(
                "ORCHESTRATOR_AUTH=off: IAM checks of control events are skipped "
                "(step tokens and internal event signatures are still checked)"
            )

    def authorize(self, event: CloudEvent, payload: object) -> Principal:
        event_type = str(event["type"])
        if event_type == t.TICK:
            return ANONYMOUS
        if event_type in t.STEP_RESULT_TYPES:
            _refuse_our_source(event, allowed=WORKER_SOURCE_PREFIX)
            return self._step(event, payload)
        if event_type in t.CONTROL_TYPES:
            _refuse_our_source(event)
        if event_type in t.FLOW_CONTROL_TYPES:
            return self._control(event, event_type, payload, FLOWS_CONTROL)
        if event_type in t.COMPONENT_CONTROL_TYPES:
            return self._control(event, event_type, payload, COMPONENTS_CONTROL)
        return self._internal(event, event_type)

    def bearer(self, authorization: str | None) -> Principal:
        """The caller of an HTTP read (`Authorization: Bearer <IAM token>`), verified as a
        control event's token is; AUTH_OFF when ORCHESTRATOR_AUTH=off. Unauthorized (401)
        without a valid token."""
        if self._verifier is None:
            return AUTH_OFF
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing IAM token (Authorization: Bearer <token>)")
        return _principal(self._verifier.verify(token.strip()))

    # --- our own events ------------------------------------------------------------------------
    def _internal(self, event: CloudEvent, event_type: str) -> Principal:
        token = _extension(event, EXT_AUTH_TOKEN)
        if token is None:
            raise Unauthorized("missing authtoken")
        sender = tokens.verify_internal(self._key, token, self._clock, event_type=event_type)
        return Principal("internal", sender, None, frozenset(), frozenset())

    # --- component workers ---------------------------------------------------------------------
    def _step(self, event: CloudEvent, payload: object) -> Principal:
        token = _extension(event, EXT_STEP_TOKEN)
        if token is None:
            raise Unauthorized("missing steptoken")
        run_id = payload_field(payload, "runId", "run_id")
        step_id = payload_field(payload, "stepId", "step_id")
        problems = [name for name, value in (("runId", run_id), ("stepId", step_id)) if not value]
        if problems:
            raise InvalidEvent(
                "step event names no " + " and ".join(problems),
                problems=[f"{name}: required" for name in problems],
            )
        claims = tokens.verify_step_token(
            self._key, token, self._clock, run_id=run_id, step_id=step_id
        )
        return Principal(
            "step", f"{claims.run_id}/{claims.step_id}", claims.tenant, frozenset(), frozenset()
        )

    # --- control events from the hub -----------------------------------------------------------
    def _control(
        self, event: CloudEvent, event_type: str, payload: object, permission: str
    ) -> Principal:
        if self._verifier is None:
            return Principal(
                "auth-off",
                AUTH_OFF.subject,
                payload_field(payload, "tenant"),
                frozenset(),
                frozenset(),
            )
        token = _extension(event, EXT_AUTH_TOKEN)
        if token is None:
            raise Unauthorized("missing authtoken")
        identity = self._verifier.verify(token)
        if not (identity.is_admin or permission in identity.permissions):
            raise Forbidden(f"token lacks the permission {permission}")
        if permission == FLOWS_CONTROL and not identity.is_admin:
            self._check_flow_tenants(event_type, payload, identity.tenant)
        return _principal(identity)

    def _check_flow_tenants(self, event_type: str, payload: object, caller: str | None) -> None:
        """Another tenant's flow is answered as an unknown one would be (same status, same
        body), so the answers do not tell which ids exist elsewhere: `flow.execute` 422,
        `flow.stopping` 200 with nothing done. Only `flow.starting` of another tenant's id is
        403: answering it like an unknown id would take the flow over."""
        stored, claimed = self._flow_tenants(event_type, payload)
        if stored is not None and stored != caller:
            if event_type == t.FLOW_EXECUTE:
                raise unknown_flow(self._flow_id(event_type, payload) or "")
            if event_type == t.FLOW_STOPPING:
                raise AnsweredAsUnknown("flow.stopping of another tenant's flow")
            raise Forbidden("token belongs to another tenant than the flow")
        if claimed is not None and claimed != caller:
            raise Forbidden("token belongs to another tenant than the flow")

    @staticmethod
    def _flow_id(event_type: str, payload: object) -> str | None:
        flow_id = (
            payload_field(payload, "flowId", "flow_id") if event_type == t.FLOW_EXECUTE else None
        )
        return flow_id or payload_field(payload, "id")

    def _flow_tenants(self, event_type: str, payload: object) -> tuple[str | None, str | None]:
        """The stored flow's tenant and, for flow.starting, the tenant the document names: the
        caller must belong to both (a flow that already exists under another tenant must not
        be taken over by re-sending it). An unknown flow has no stored tenant (execute: the
        handler answers 422; stopping: nothing to stop)."""
        flow_id = self._flow_id(event_type, payload)
        stored = self._flow_tenant(flow_id) if flow_id else None
        claimed = None
        if event_type == t.FLOW_STARTING:
            claimed = payload_field(payload, "tenant")
            if claimed is None:
                raise InvalidEvent("flow document names no tenant", problems=["tenant: required"])
        return stored, claimed


def _principal(identity: IamIdentity) -> Principal:
    return Principal("iam", identity.subject, identity.tenant, identity.permissions, identity.roles)
