"""The step-execute function: a thin adapter from CloudEvents to shared.handlers.step_execute."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from shared.handlers.step_execute import SPEC
from shared.operations import executions
from shared.runtime.function import lazy_runtime
from shared.runtime.http import install_guards, serve
from shared.runtime.logs import configure_logging

configure_logging("step-execute")
runtime = lazy_runtime(SPEC)
# the original orchestrator's GET /executions reads, beside the CloudEvents (docs/oih.md)
install_guards(
    routes=executions.http_routes(lambda: (runtime().redis, runtime().authorizer.bearer))
)


@functions_framework.cloud_event
def handle(event: CloudEvent) -> None:
    serve(lambda e: runtime().handle(e), event)
