"""Paged tick walks (shared/runtime/tick_cursor.py) on a real Redis."""

from __future__ import annotations

import pytest
from redis import Redis

from shared import keys
from shared.runtime import tick_cursor

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster


def _pass(redis: Redis, names: set[str], size: int) -> list[list[str]]:
    """The pages of one pass (until the cursor is back at the start)."""
    pages = [tick_cursor.page(redis, keys.DEPLOY, "w", names, size)]
    while tick_cursor.load(redis, keys.DEPLOY, "w"):
        pages.append(tick_cursor.page(redis, keys.DEPLOY, "w", names, size))
    return pages


def test_a_pass_visits_every_name_once_in_pages_of_at_most_the_size(redis: Redis) -> None:
    names = {f"n{i:02d}" for i in range(7)}
    pages = _pass(redis, names, 3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sorted(n for p in pages for n in p) == sorted(names)
    assert _pass(redis, names, 3) == pages  # the next pass starts again from the beginning
    assert redis.exists(keys.tick_cursor(keys.DEPLOY, "w")) == 0  # nothing left between passes


def test_names_added_and_removed_mid_pass_never_make_a_name_seen_twice(redis: Redis) -> None:
    names = {"b", "d", "f", "h"}
    first = tick_cursor.page(redis, keys.DEPLOY, "w", names, 2)
    assert first == ["b", "d"]
    names -= {"b", "f"}  # one behind the cursor, one ahead
    names |= {"a", "e"}  # one behind (waits for the next pass), one ahead
    second = tick_cursor.page(redis, keys.DEPLOY, "w", names, 2)
    assert second == ["e", "h"]
    assert tick_cursor.load(redis, keys.DEPLOY, "w") == ""  # the pass is done
    assert tick_cursor.page(redis, keys.DEPLOY, "w", names, 2) == ["a", "d"]


def test_an_empty_walk_leaves_no_cursor(redis: Redis) -> None:
    assert tick_cursor.page(redis, keys.POLICY, "w", [], 5) == []
    assert redis.exists(keys.tick_cursor(keys.POLICY, "w")) == 0
