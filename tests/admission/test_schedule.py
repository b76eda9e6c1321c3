"""Cron arithmetic (issue 4 §1, §2, §6): due times across DST, Feb 29, spread, catch-up."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.admission import schedule
from shared.errors import InvalidEvent


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


NEXT_TIMES = [
    ("* * * * *", "UTC", "2026-01-01T00:00:00+00:00", "2026-01-01T00:01:00Z"),
    ("* * * * *", "UTC", "2026-01-01T00:00:30+00:00", "2026-01-01T00:01:00Z"),
    ("0 * * * *", "UTC", "2026-01-01T10:15:00+00:00", "2026-01-01T11:00:00Z"),
    ("0 9 * * 1-5", "Europe/Berlin", "2026-01-09T09:00:00+01:00", "2026-01-12T08:00:00Z"),
    # Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST
    ("30 2 * * *", "Europe/Berlin", "2026-03-29T00:00:00+01:00", "2026-03-29T01:30:00Z"),
    ("30 2 * * *", "Europe/Berlin", "2026-03-29T03:30:00+02:00", "2026-03-30T00:30:00Z"),
    ("0 * * * *", "Europe/Berlin", "2026-03-29T01:30:00+01:00", "2026-03-29T01:00:00Z"),
    ("0 * * * *", "Europe/Berlin", "2026-03-29T03:00:00+02:00", "2026-03-29T02:00:00Z"),
    ("0 12 * * *", "Europe/Berlin", "2026-03-28T12:00:00+01:00", "2026-03-29T10:00:00Z"),
    # Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET (02:xx happens twice)
    ("30 2 * * *", "Europe/Berlin", "2026-10-25T00:00:00+02:00", "2026-10-25T00:30:00Z"),
    ("30 2 * * *", "Europe/Berlin", "2026-10-25T02:30:00+02:00", "2026-10-26T01:30:00Z"),
    ("*/30 * * * *", "Europe/Berlin", "2026-10-25T02:30:00+02:00", "2026-10-25T02:00:00Z"),
    ("*/30 * * * *", "Europe/Berlin", "2026-10-25T02:10:00+01:00", "2026-10-25T02:00:00Z"),
    # America/New_York, 2026-03-08: 02:00 EST jumps to 03:00 EDT
    ("0 12 * * *", "America/New_York", "2026-03-07T12:00:00-05:00", "2026-03-08T16:00:00Z"),
    ("30 2 * * *", "America/New_York", "2026-03-08T00:00:00-05:00", "2026-03-08T07:30:00Z"),
    # America/New_York, 2026-11-01: 02:00 EDT falls back to 01:00 EST
    ("30 1 * * *", "America/New_York", "2026-11-01T00:00:00-04:00", "2026-11-01T05:30:00Z"),
    ("30 1 * * *", "America/New_York", "2026-11-01T01:30:00-04:00", "2026-11-02T06:30:00Z"),
    ("0 12 * * *", "America/New_York", "2026-11-01T00:00:00-04:00", "2026-11-01T17:00:00Z"),
    # Feb 29 exists only in leap years
    ("0 0 29 2 *", "UTC", "2026-01-01T00:00:00+00:00", "2028-02-29T00:00:00Z"),
    ("0 0 29 2 *", "UTC", "2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00Z"),
    ("0 0 29 2 *", "Europe/Berlin", "2026-01-01T00:00:00+01:00", "2028-02-28T23:00:00Z"),
]


@pytest.mark.parametrize(
    ("cron", "zone", "after", "expected"),
    NEXT_TIMES,
    ids=[f"{c} in {z} after {a}" for c, z, a, _ in NEXT_TIMES],
)
def test_next_time(cron: str, zone: str, after: str, expected: str) -> None:
    assert iso(schedule.next_time(cron, zone, ts(after))) == expected


@pytest.mark.parametrize(
    ("zone", "day", "cron", "runs"),
    [
        ("Europe/Berlin", "2026-03-29", "0 * * * *", 23),  # 02:00 does not exist
        ("Europe/Berlin", "2026-10-25", "0 * * * *", 24),  # 02:00 happens twice, runs once
        ("Europe/Berlin", "2026-10-25", "30 2 * * *", 1),
        ("Europe/Berlin", "2026-03-29", "30 2 * * *", 1),  # shifted past the gap, not lost
        ("America/New_York", "2026-03-08", "*/15 * * * *", 92),
        ("America/New_York", "2026-11-01", "*/15 * * * *", 96),
    ],
    ids=lambda v: str(v),
)
def test_each_wall_time_of_a_dst_day_runs_once(zone: str, day: str, cron: str, runs: int) -> None:
    from zoneinfo import ZoneInfo

    start = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(zone)).timestamp()
    end = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(zone)).timestamp() + 25 * 3600
    times = []
    when = schedule.next_time(cron, zone, start - 1)
    while when < end:
        local = datetime.fromtimestamp(when, ZoneInfo(zone))
        if local.date().isoformat() == day:
            times.append(when)
        when = schedule.next_time(cron, zone, when)
    assert len(times) == runs
    assert times == sorted(set(times))  # strictly increasing: nothing fires twice


@pytest.mark.parametrize(
    ("cron", "zone", "problem"),
    [
        ("61 * * * *", "UTC", "cron"),
        ("banana", "UTC", "cron"),
        ("0 0 31 2 *", "UTC", "cron"),
        ("* * * * *", "Nowhere/City", "timezone"),
    ],
    ids=["minute out of range", "not a cron", "never fires", "unknown zone"],
)
def test_invalid_schedules_name_the_field(cron: str, zone: str, problem: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        schedule.check(cron, zone)
    assert refused.value.problems[0].startswith(problem)


# --- spread --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cron", "bound"),
    [("* * * * *", 15), ("*/5 * * * *", 75), ("0 * * * *", 300), ("0 3 * * *", 300)],
    ids=["every minute", "every 5 minutes", "hourly", "daily"],
)
def test_spread_is_bounded_by_the_first_part_of_the_interval(cron: str, bound: int) -> None:
    offsets = {schedule.spread_offset(f"flow-{i}", cron, "UTC") for i in range(500)}
    assert min(offsets) >= 0 and max(offsets) < bound
    assert len(offsets) > bound * 0.8  # and it does spread


@given(flow_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,40}", fullmatch=True))
@settings(max_examples=50, deadline=None)
def test_spread_is_stable_whole_seconds_and_off_on_request(flow_id: str) -> None:
    first = schedule.spread_offset(flow_id, "*/10 * * * *", "Europe/Berlin")
    assert first == schedule.spread_offset(flow_id, "*/10 * * * *", "Europe/Berlin")
    assert isinstance(first, int) and 0 <= first < 150
    assert schedule.spread_offset(flow_id, "*/10 * * * *", "UTC", enabled=False) == 0


def test_first_due_adds_the_offset_to_the_next_cron_time() -> None:
    now = ts("2026-01-01T00:00:20+00:00")
    assert iso(schedule.first_due("* * * * *", "UTC", 7, now)) == "2026-01-01T00:01:07Z"
    # 00:00:07 (offset 7) is still ahead of 00:00:05
    early = ts("2026-01-01T00:00:05+00:00")
    assert iso(schedule.first_due("* * * * *", "UTC", 7, early)) == "2026-01-01T00:00:07Z"


# --- catch-up ------------------------------------------------------------------------------
T = ts("2026-01-01T12:00:00+00:00")
MIN = 60.0
DAY = 86400.0


def every_minute(due: float) -> float:
    return schedule.next_time("* * * * *", "UTC", due)


def daily(due: float) -> float:
    return schedule.next_time("0 12 * * *", "UTC", due)


@pytest.mark.parametrize(
    ("due", "now", "window", "step", "expected"),
    [
        (T, T, 300, every_minute, schedule.Plan(T, None, T + MIN)),
        (T, T + 30, 300, every_minute, schedule.Plan(T, None, T + MIN)),
        (T - 2 * MIN, T + 1, 300, every_minute, schedule.Plan(T, None, T + MIN)),
        (T - 60 * MIN, T + 1, 300, every_minute, schedule.Plan(T, T - 60 * MIN, T + MIN)),
        (T - 2 * DAY, T + 10 * MIN, 300, daily, schedule.Plan(None, T - 2 * DAY, T + DAY)),
        (T - DAY, T + 2 * MIN, 300, daily, schedule.Plan(T, T - DAY, T + DAY)),
        (T, T + 3, 0, every_minute, schedule.Plan(T, None, T + MIN)),
        (T, T + 30, 0, every_minute, schedule.Plan(None, T, T + MIN)),
    ],
    ids=[
        "on time",
        "half a minute late",
        "three due times within the window run once",
        "an hour down: the older ones are announced missed once, the latest runs",
        "two days down, daily: missed, nothing in the window",
        "a day down, daily, today's due time in the window runs",
        "window 0 still tolerates a few seconds",
        "window 0: half a minute late is missed",
    ],
)
def test_plan(
    due: float,
    now: float,
    window: float,
    step: schedule.NextAfter,
    expected: schedule.Plan,
) -> None:
    assert schedule.plan(due, now, window, step) == expected


def test_next_times_memo_matches_next_time() -> None:
    memo = schedule.NextTimes()
    step = memo.for_schedule("*/5 * * * *", "Europe/Berlin", 17)
    due = schedule.first_due("*/5 * * * *", "Europe/Berlin", 17, T)
    assert step(due) == schedule.next_time("*/5 * * * *", "Europe/Berlin", due - 17) + 17
    assert step(due) - due == 300


MEMO_CRONS = ["* * * * *", "*/5 * * * *", "30 2 * * *", "0 9 * * 1-5", "15,45 * * * *"]
# DST zones, a :45 offset, and Monrovia's -0:44:30 until 1972 (times inside a minute)
MEMO_ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kathmandu", "Africa/Monrovia"]


@settings(max_examples=300, deadline=None)
@given(
    cron=st.sampled_from(MEMO_CRONS),
    zone=st.sampled_from(MEMO_ZONES),
    after=st.integers(min_value=-200_000_000, max_value=2_000_000_000),
)
def test_the_per_minute_memo_gives_what_next_time_gives(cron: str, zone: str, after: int) -> None:
    assert schedule.memoized_next_time(cron, zone, after) == schedule.next_time(cron, zone, after)
    # every second of the same minute, through the memo filled above
    minute = after - after % 60
    for second in (0, 1, 29, 59):
        expected = schedule.next_time(cron, zone, minute + second)
        assert schedule.memoized_next_time(cron, zone, minute + second) == expected


# A 6-field cron has its seconds first, as OIH's cron-parser reads it.
SECONDS_FIRST = [
    ("0 */5 * * * *", "2026-01-01T00:00:00+00:00", "2026-01-01T00:05:00Z"),
    ("30 */5 * * * *", "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:30Z"),
    ("30 */5 * * * *", "2026-01-01T00:00:30+00:00", "2026-01-01T00:05:30Z"),
    ("0 0 9 * * *", "2026-01-01T10:00:00+00:00", "2026-01-02T09:00:00Z"),
    ("15 * * * * *", "2026-01-01T00:00:15+00:00", "2026-01-01T00:01:15Z"),
]


@pytest.mark.parametrize(("cron", "after", "expected"), SECONDS_FIRST)
def test_a_six_field_cron_is_read_seconds_first(cron: str, after: str, expected: str) -> None:
    assert iso(schedule.next_time(cron, "UTC", ts(after))) == expected
    assert schedule.seconds_first(cron)


@pytest.mark.parametrize(
    ("cron", "minimum", "refused"),
    [
        ("* * * * *", 60, False),
        ("0 */5 * * * *", 60, False),
        ("*/30 * * * * *", 60, True),
        ("*/30 * * * * *", 30, False),
        ("* * * * * *", 60, True),
        ("* * * * * *", 1, False),
        ("* 0 * * * *", 60, True),  # every second of minute 0: sampled from the reference
    ],
)
def test_a_cron_firing_more_often_than_the_minimum_is_refused_naming_cron(
    cron: str, minimum: float, refused: bool
) -> None:
    if not refused:
        schedule.check(cron, "UTC", min_interval_seconds=minimum)
        return
    with pytest.raises(InvalidEvent) as caught:
        schedule.check(cron, "UTC", min_interval_seconds=minimum)
    assert caught.value.problems[0].startswith("cron:")
