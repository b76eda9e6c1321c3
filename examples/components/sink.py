"""Example sink: logs each record and emits nothing."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("examples.sink")


def process(msg: dict[str, Any], fields: dict[str, Any]) -> None:
    log.info("sink %s received %s", fields.get("name", msg["metadata"]["stepId"]), msg["data"])


store = process  # the function name the local catalogue gives this component
