"""A local worker stops when the process that started it is gone (no orphans after make run)."""

from __future__ import annotations

import os
import threading

import pytest

from shared.worker.main import watch_parent


@pytest.mark.parametrize(
    ("parent", "stops"),
    [
        pytest.param(lambda: str(os.getppid()), False, id="parent alive: keeps running"),
        pytest.param(lambda: str(os.getppid() + 1_000_000), True, id="other parent: stops"),
        pytest.param(lambda: "", False, id="not local (unset): never stops by itself"),
        pytest.param(lambda: "not-a-pid", False, id="garbage: ignored"),
    ],
)
def test_watch_parent(parent: object, stops: bool) -> None:
    stop = threading.Event()
    watch_parent(parent(), stop, interval=0.02)  # type: ignore[operator]
    assert stop.wait(0.5) is stops
    stop.set()
