"""The deploy function: a thin adapter from CloudEvents to shared.handlers.deploy."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from shared.handlers.deploy import SPEC
from shared.runtime.function import lazy_runtime
from shared.runtime.http import install_guards, serve
from shared.runtime.logs import configure_logging

configure_logging("deploy")
runtime = lazy_runtime(SPEC)
install_guards()


@functions_framework.cloud_event
def handle(event: CloudEvent) -> None:
    serve(lambda e: runtime().handle(e), event)
