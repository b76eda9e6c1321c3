"""The hub's payloads as its services send them (tests/fixtures/oih/, each from the OIH file it
names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "oih"


def fixture(name: str) -> dict[str, Any]:
    """The fixture `<name>.json` (a whole CloudEvent or bus message, as stored)."""
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded
