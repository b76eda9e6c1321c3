"""Paged ticks: a tick walks at most `TICK_PAGE_SIZE` items, and the next tick goes on from a
cursor kept in Redis (docs/reliability.md, "Ticks").

A walk is over names in their sorted order; the cursor is the last name the previous tick
took, so every name present for a whole pass is visited exactly once in it, whatever is added
or removed meanwhile (a name added behind the cursor waits for the next pass). The work each
name costs (records loaded, API calls, scripts) is what is bounded; reading the names is one
command. The cursor moves before the work: a tick that dies mid-page leaves the rest of its
page to the next pass instead of retrying the same page forever. Every walk is level-based
(reconcile, watchdog, rules), so a name seen one pass later loses nothing but time.

Two walks kept as text tokens (a Kubernetes `continue`) use `load` and `store` directly.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis import Redis

from shared import keys
from shared.store import as_text


def load(redis: Redis, tag: str, walk: str) -> str:
    """The walk's cursor ('' at the start of a pass)."""
    raw = redis.get(keys.tick_cursor(tag, walk))
    return as_text(raw) if raw is not None else ""


def store(redis: Redis, tag: str, walk: str, cursor: str) -> None:
    """Moves the walk's cursor ('' starts the next pass from the beginning)."""
    if cursor:
        redis.set(keys.tick_cursor(tag, walk), cursor)
    else:
        redis.delete(keys.tick_cursor(tag, walk))


def page(redis: Redis, tag: str, walk: str, names: Iterable[str], size: int) -> list[str]:
    """The next at most `size` names after the cursor, in order; the cursor moves past them (to
    the start when the pass is done)."""
    cursor = load(redis, tag, walk)
    ahead = sorted(name for name in set(names) if name > cursor)
    taken = ahead[:size]
    store(redis, tag, walk, taken[-1] if len(ahead) > size else "")
    return taken
