"""The published JSON Schema of each event type's data, generated from its payload declaration."""

from __future__ import annotations

from typing import Any

from shared.events import types as t
from shared.events.envelope import PAYLOADS


def schema_of(event_type: str) -> dict[str, Any]:
    """The schema document for `event_type`: its `$id` is the `dataschema` our events carry."""
    body = PAYLOADS[event_type].json_schema()
    return {
        "$schema": body.pop("$schema"),
        "$id": t.dataschema(event_type),
        "title": f"{t.short(event_type)} data ({body.pop('title')})",
        **body,
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name → schema document, one per type of the catalogue."""
    return {f"{t.short(e)}.json": schema_of(e) for e in sorted(t.ALL_TYPES)}
