"""Redaction is linear in its input: time per KB of `redact_text`, 1 KB to 1 MB, for the texts
that were quadratic (one long word; `name=` runs; unclosed quotes; JWT-like runs) and for
ordinary log text. Ratios within one run (largest / smallest time per KB) say "flat"; a
quadratic pattern shows a ratio near 1000 over this range."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.security.redact import redact_text

SIZES_KB = (1, 4, 16, 64, 256, 1024)

TEXTS: dict[str, Callable[[int], str]] = {
    "one long word": lambda n: "a" * n,
    "name= runs": lambda n: ("token=" * (n // 6 + 1))[:n],
    "unclosed quotes": lambda n: ("a='" * (n // 3 + 1))[:n],
    "json pairs": lambda n: ('"a": "' * (n // 6 + 1))[:n],
    "jwt-like runs": lambda n: ("eyJaaaa-" * (n // 8 + 1))[:n],
    "dotted names": lambda n: ("a." * (n // 2 + 1))[:n],
    "log text": lambda n: (
        "flow f1 run r1 step a: token=abc123456 Bearer eyJhbGciOi.eyJzdWIi.c2ln sent 3 events; "
        * (n // 88 + 1)
    )[:n],
}


def _per_kb(text: str, kb: int) -> float:
    best = float("inf")
    for _ in range(3 if kb < 256 else 1):
        started = time.perf_counter()
        redact_text(text)
        best = min(best, time.perf_counter() - started)
    return best / kb


def run(results_dir: Path) -> dict[str, Any]:
    table: dict[str, dict[str, float]] = {}
    ratios: dict[str, float] = {}
    for name, make in TEXTS.items():
        row = {f"{kb}KB": _per_kb(make(kb * 1024), kb) * 1e6 for kb in SIZES_KB}
        table[name] = row
        ratios[name] = round(max(row.values()) / min(row.values()), 2)
    results = {
        "microseconds_per_kb": table,
        "max_over_min_per_kb": ratios,
        "worst_ratio": max(ratios.values()),
    }
    (results_dir / "redaction.json").write_text(json.dumps(results, indent=2))
    return results
