"""Shared pytest fixtures registered for the whole suite (extended by other plugins)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.http_sink import HttpSink


@pytest.fixture()
def sink() -> Iterator[HttpSink]:
    """An HTTP event sink (K_SINK) that records what the functions emit."""
    with HttpSink() as server:
        yield server
