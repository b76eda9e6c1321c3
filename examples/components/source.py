"""Example source: emits a few records per trigger (fields: `count`, default 3)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def process(msg: dict[str, Any], fields: dict[str, Any]) -> Iterator[dict[str, Any]]:
    count = int(fields.get("count", 3))
    run_id = msg["metadata"]["runId"]
    for index in range(count):
        yield {"id": f"{run_id}-{index}", "index": index, "value": index * 10}


emit = process  # the function name the local catalogue gives this component
