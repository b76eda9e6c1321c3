"""The flow-start function: a thin adapter from CloudEvents to shared.handlers.flow_start."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from shared.handlers.flow_start import SPEC
from shared.runtime.function import lazy_runtime
from shared.runtime.http import install_guards, serve
from shared.runtime.logs import configure_logging

configure_logging("flow-start")
runtime = lazy_runtime(SPEC)
install_guards()


@functions_framework.cloud_event
def handle(event: CloudEvent) -> None:
    serve(lambda e: runtime().handle(e), event)
