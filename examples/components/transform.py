"""Example transform: scales `value` by the field `factor` (default 2) and tags the record."""

from __future__ import annotations

from typing import Any


def process(msg: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    record = dict(msg["data"]) if isinstance(msg["data"], dict) else {"value": msg["data"]}
    factor = float(fields.get("factor", 2))
    value = record.get("value", 0)
    record["value"] = value * factor if isinstance(value, int | float) else value
    record["transformed"] = True
    return record


transform = process  # the function name the local catalogue gives this component
