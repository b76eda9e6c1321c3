"""The demo's one component (catalogue id `demo-step`): works `fields.seconds`, then emits
`fields.count` records (default 1; 0: none). The step worker runs it (`python -m shared.worker`)
in `make run`; the headless demo calls `produce` on simulated time instead of sleeping."""

from __future__ import annotations

import time
from typing import Any


def produce(msg: dict[str, Any], fields: dict[str, Any]) -> list[dict[str, Any]]:
    """The records one message yields, without the work time."""
    count = int(fields.get("count", 1))
    run_id = str(msg.get("metadata", {}).get("runId", ""))
    return [{"run": run_id, "index": index} for index in range(count)]


def process(msg: dict[str, Any], fields: dict[str, Any]) -> list[dict[str, Any]] | None:
    seconds = float(fields.get("seconds", 0) or 0)
    if seconds > 0:
        time.sleep(seconds)
    records = produce(msg, fields)
    return records or None
