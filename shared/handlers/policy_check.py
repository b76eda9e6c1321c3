"""policy-check (DESIGN §3). Placeholder wiring: records what it receives until its issue lands."""

from __future__ import annotations

from shared import keys
from shared.events.types import CONSUMES
from shared.handlers.recording import no_services, record_received
from shared.runtime import FunctionSpec, Handler

HANDLERS: dict[str, Handler[object]] = dict.fromkeys(CONSUMES["policy-check"], record_received)

SPEC: FunctionSpec[object] = FunctionSpec(
    name="policy-check", tag=keys.POLICY, handlers=HANDLERS, build_services=no_services
)
