"""Single-flight ticks: at most one tick per function works at a time, across all instances.

A burst of `orchestrator.tick` events (a broker replaying after an outage, retries, two
sources) must not occupy every worker thread: flow-start's tick works through most of a
minute, and functions-framework serves a few threads per CPU. The first tick takes a lease
in Redis (`SET NX PX`, a random token); a tick that finds the lease held answers at once.
The lease outlives the holder's work by a margin, so a holder that dies frees it after that
time and the next tick works (docs/reliability.md, "Ticks").

The lease is a liveness device, not a correctness one: every decision a tick makes is one
atomic script, so two overlapping ticks (the holder stalled past its lease) only waste work.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

from shared import keys
from shared.scripts import load_script

MARGIN_SECONDS = 15.0  # beyond the work budget: a live holder always finishes inside it


def acquire(redis: Redis, tag: str, hold_seconds: float) -> str | None:
    """The holder's token, or None when another tick holds the function's lease."""
    token = secrets.token_hex(16)
    ttl_ms = max(1, int((hold_seconds + MARGIN_SECONDS) * 1000))
    if redis.set(keys.tick_lease(tag), token, nx=True, px=ttl_ms):
        return token
    return None


def release(redis: Redis, tag: str, token: str) -> bool:
    """True if released; False when the lease had expired (and maybe another tick took it)."""
    return bool(load_script("tick_lease_release")(redis, [keys.tick_lease(tag)], [token]))


@contextmanager
def single_flight(redis: Redis, tag: str, hold_seconds: float) -> Iterator[bool]:
    """Yields True while this tick holds the lease (it works), False when another does."""
    token = acquire(redis, tag, hold_seconds)
    try:
        yield token is not None
    finally:
        if token is not None:
            release(redis, tag, token)
