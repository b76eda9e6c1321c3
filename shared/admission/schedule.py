"""Cron arithmetic of flow-start (docs/architecture.md §5): due times in the flow's zone, spread,
catch-up.

- Cron expressions are read as wall-clock times in the flow's zone and stepped on naive local
  times, then mapped to UTC: a wall time in a spring-forward gap runs after the gap (shifted by
  its length), a wall time that occurs twice in the fall-back hour runs once (the first time),
  and due times always strictly increase. So every day runs each of its wall times once.
- A stable per-flow offset (whole seconds, from a hash of the flow id) spreads flows that share
  an expression over the first part of their interval, unless `flowSettings.spread` is false.
- A 6-field expression has its seconds first, as OIH's cron-parser reads it (`0 */5 * * * *`
  is every five minutes); croniter's own default would read the sixth field as seconds.
- A tick plans each due entry: run it, or (after an outage) run only the latest due time
  within the catch-up window and announce the older ones once as missed; never a burst.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from shared.errors import InvalidEvent

SPREAD_FRACTION = 0.25  # offsets stay within the first quarter of the interval ...
MAX_SPREAD_SECONDS = 300  # ... and within five minutes
ON_TIME_SECONDS = 5.0  # a due time this late is on time, whatever the catch-up window
_MAX_STEPS = 5000  # candidate wall times examined to find the next due time (fold hours)
_INTERVAL_SAMPLES = 8
_REFERENCE = datetime(2026, 1, 5, tzinfo=UTC).timestamp()  # a Monday: offsets do not drift

NextAfter = Callable[[float], float]


def _zone(zone: str) -> ZoneInfo:
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidEvent(
            f"timezone: unknown time zone: {zone!r}", problems=[f"timezone: unknown: {zone!r}"]
        ) from exc


def seconds_first(cron: str) -> bool:
    """Whether `cron` has a seconds field (6 fields), read first as OIH's cron-parser does."""
    return len(cron.split()) == 6


def is_valid(cron: str) -> bool:
    """Whether croniter reads `cron` (seconds first when it has 6 fields)."""
    try:
        return bool(croniter.is_valid(cron, second_at_beginning=True))
    except Exception:  # croniter raises assorted errors on odd input
        return False


def next_time(cron: str, zone: str, after: float) -> float:
    """The first time of `cron` in `zone` strictly after `after` (epoch seconds, whole)."""
    tz = _zone(zone)
    local = datetime.fromtimestamp(after, tz).replace(tzinfo=None)
    steps = croniter(cron, local, second_at_beginning=True)
    for _ in range(_MAX_STEPS):
        wall = steps.get_next(datetime)
        # fold=0: in a gap this is the wall time shifted forward by the gap's length; in a
        # repeated hour it is the first occurrence (the second one is earlier than `after`).
        when = float(int(wall.replace(tzinfo=tz).timestamp()))
        if when > after:
            return when
    raise InvalidEvent(f"cron: {cron!r} has no time after {after}", problems=["cron: never fires"])


def is_time_of(cron: str, zone: str, when: float) -> bool:
    """Whether `when` (whole epoch seconds) is one of the times of `cron` in `zone`."""
    return next_time(cron, zone, when - 1) == when


def check(cron: str, zone: str, *, min_interval_seconds: float = 0.0) -> None:
    """Raises InvalidEvent naming `cron` or `timezone` when the schedule cannot run, or when
    it fires more often than every `min_interval_seconds` (sampled: `interval_seconds`)."""
    _zone(zone)
    if not is_valid(cron):
        raise InvalidEvent(
            f"cron: not a valid cron expression: {cron!r}", problems=[f"cron: invalid: {cron!r}"]
        )
    try:
        next_time(cron, zone, _REFERENCE)
    except InvalidEvent:
        raise
    except Exception as exc:  # CroniterBadDateError: e.g. 30 February
        raise InvalidEvent(
            f"cron: {cron!r} never fires", problems=[f"cron: never fires: {cron!r}"]
        ) from exc
    gap = interval_seconds(cron, zone)
    if gap < min_interval_seconds:
        raise InvalidEvent(
            f"cron: {cron!r} fires every {gap:g} s, more often than the minimum interval of "
            f"{min_interval_seconds:g} s",
            problems=[f"cron: more often than every {min_interval_seconds:g} s: {cron!r}"],
        )


@functools.lru_cache(maxsize=1024)
def interval_seconds(cron: str, zone: str) -> float:
    """The shortest gap between consecutive times of `cron` (sampled from a fixed date)."""
    times = [_REFERENCE]
    for _ in range(_INTERVAL_SAMPLES):
        times.append(next_time(cron, zone, times[-1]))
    return min(later - earlier for earlier, later in itertools.pairwise(times[1:]))


def spread_offset(flow_id: str, cron: str, zone: str, *, enabled: bool = True) -> int:
    """Whole seconds added to each due time of the flow: stable, below the bound."""
    if not enabled:
        return 0
    bound = int(min(interval_seconds(cron, zone) * SPREAD_FRACTION, MAX_SPREAD_SECONDS))
    if bound < 1:
        return 0
    digest = hashlib.sha256(flow_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % bound


def first_due(cron: str, zone: str, offset: int, now: float) -> float:
    """The first due time after `now` of a newly stored schedule."""
    return next_time(cron, zone, now - offset) + offset


MEMO_MINUTES = 65_536  # (expression, zone, minute) entries kept by the process


@functools.lru_cache(maxsize=MEMO_MINUTES)
def _next_after_minute(cron: str, zone: str, minute: float) -> float:
    return next_time(cron, zone, minute)


def memoized_next_time(cron: str, zone: str, after: float) -> float:
    """`next_time`, memoized per (expression, zone, minute) for the whole process: every flow
    sharing an expression shares one croniter walk per minute, whatever its spread offset.

    The first time after the minute's start is also the first time after `after` whenever it
    lies beyond `after` (nothing of the schedule falls between them); only a time inside the
    minute itself (a seconds field, an offset that is not whole minutes) is computed afresh.
    """
    found = _next_after_minute(cron, zone, after - after % 60)
    return found if found > after else next_time(cron, zone, after)


class NextTimes:
    """Due time -> next due time of a schedule, through the per-minute memo; one per tick
    (`plans`: the tick's plans, by what they depend on: all of an entry but its flow and user)."""

    def __init__(self) -> None:
        self.plans: dict[tuple[object, ...], str] = {}
        # the same plans by the due read's bytes (cron.fire_args_packed: no decoding per entry)
        self.plans_packed: dict[tuple[object, ...], str] = {}

    def __call__(self, cron: str, zone: str, after: float) -> float:
        return memoized_next_time(cron, zone, after)

    def for_schedule(self, cron: str, zone: str, offset: int) -> NextAfter:
        """Due time → next due time, offsets included."""
        return lambda due: memoized_next_time(cron, zone, due - offset) + offset


@dataclass(frozen=True)
class Plan:
    """What one tick does with one due entry."""

    fire: float | None  # the due time to run now
    missed_from: float | None  # the first due time announced as missed (older than the window)
    next_due: float  # the entry's new score (> now)


def plan(due: float, now: float, catchup_seconds: float, next_due: NextAfter) -> Plan:
    """Plans a due entry (`due` ≤ now): run it, or only the latest due time in the window."""
    window_start = now - max(catchup_seconds, ON_TIME_SECONDS)
    following = next_due(due)
    if following > now:  # the usual case: one due time passed
        if due >= window_start:
            return Plan(fire=due, missed_from=None, next_due=following)
        return Plan(fire=None, missed_from=due, next_due=following)
    missed_from = due if due < window_start else None
    current = due if due >= window_start else next_due(window_start - 1)
    latest: float | None = None
    while current <= now:
        latest = current
        current = next_due(current)
    return Plan(fire=latest, missed_from=missed_from, next_due=current)


def parse_instant(text: str | None) -> float | None:
    """An ISO 8601 time (the hub's `2024-05-02T10:00:00.000Z`) as epoch seconds; None when
    missing or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
