"""A global component's entrypoint for tests/interop/test_oih_global_components.py."""

from __future__ import annotations

from typing import Any


def upsertPerson(msg: dict[str, Any], fields: dict[str, Any]) -> Any:
    return {"upserted": msg["data"]}
