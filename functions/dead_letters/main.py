"""The Broker's dead-letter sink: the image's fifth target (shared.runtime.dead_letters)."""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from shared.runtime.dead_letters import sink_function
from shared.runtime.http import serve
from shared.runtime.logs import configure_logging

configure_logging("dead-letters")
accept = sink_function()  # the HTTP guards and, where configured, the OIDC check


@functions_framework.cloud_event
def handle(event: CloudEvent) -> None:
    serve(accept, event)
