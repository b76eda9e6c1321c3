"""The rules every Lua script keeps, read from the scripts themselves (tests/scripts/lua_rules.py):
a `#!lua` shebang first, every key a KEYS entry or a declared key family plus an id, no event
type literal. A Redis Cluster proves the slot rule at run time (the reliability tests); these
tests name the line that breaks it."""

from __future__ import annotations

import re
from importlib import resources
from typing import cast

import pytest
from redis import Redis

from shared import keys
from shared.admission import cron
from shared.clock import FakeClock
from shared.events import FlowDocument
from shared.scripts import SHEBANG, script_source, split_shebang
from tests.scripts.lua_rules import event_type_literals, key_problems
from tests.support.admission import SOURCE, Admission
from tests.support.flows import policy

SCRIPTS_DIR = resources.files("shared.scripts")
FILES = sorted(
    p.name.removesuffix(".lua") for p in SCRIPTS_DIR.iterdir() if p.name.endswith(".lua")
)
INCLUDED = {
    name
    for script in FILES
    for name in re.findall(
        r"^--#include (\w+)", SCRIPTS_DIR.joinpath(f"{script}.lua").read_text(), re.M
    )
}
ENTRY_POINTS = [name for name in FILES if name not in INCLUDED]


@pytest.mark.parametrize("name", FILES)
def test_every_script_file_starts_with_the_lua_shebang(name: str) -> None:
    assert SCRIPTS_DIR.joinpath(f"{name}.lua").read_text().splitlines()[0] == SHEBANG


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_the_loaded_script_has_one_shebang_and_it_is_first(name: str) -> None:
    source = script_source(name)
    assert source.startswith(SHEBANG + "\n")
    assert source.count("#!lua") == 1, "an included file's shebang must not reach Redis"


def test_a_file_without_the_shebang_is_refused() -> None:
    with pytest.raises(ValueError, match=r"broken\.lua.*#!lua"):
        split_shebang("broken", "-- broken: no shebang\nreturn 1\n")
    assert split_shebang("ok", "#!lua flags=no-writes\nreturn 1\n") == (
        "#!lua flags=no-writes",
        "return 1\n",
    )


def test_every_included_file_is_read_as_part_of_a_script() -> None:
    """Library files are checked inside the scripts that include them: each must be included."""
    used = {
        name for entry in ENTRY_POINTS for name in INCLUDED if f"-- {name}:" in script_source(entry)
    }
    assert used == INCLUDED


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_key_a_script_touches_is_declared_or_a_declared_family_plus_an_id(name: str) -> None:
    assert key_problems(script_source(name)) == []


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_no_script_spells_an_event_type(name: str) -> None:
    assert event_type_literals(script_source(name)) == []


def test_only_keys_common_defines_the_family_key_builder() -> None:
    defining = [
        n for n in FILES if "function family_key" in SCRIPTS_DIR.joinpath(f"{n}.lua").read_text()
    ]
    assert defining == ["keys_common"]


# The reader itself: what it must refuse, and what it must accept (so the rule can fail).
BUILDER = "local function family_key(family, id) return family .. id end\n"


@pytest.mark.parametrize(
    "code",
    [
        "redis.call('GET', ARGV[1])",
        "redis.call('GET', 'co:{adm}:due')",
        "redis.call('GET', ARGV[1] .. 'sched:' .. flow)",
        "redis.call('GET', KEYS[1] .. ':x')",
        "local P = ARGV[1]\nlocal K = { due = P .. 'due' }\nredis.call('ZADD', K.due, 1, 'f')",
        "local prefix = string.sub(KEYS[7], 1, 3)\nredis.call('DEL', prefix .. id)",
        "local function q(f) return ARGV[1] .. f end\nredis.call('LPOP', q('f'))",
        "local function put(key) redis.call('SET', key, 1) end\nput(KEYS[1])\nput(ARGV[2])",
        "redis.call('DEL', KEYS[1], ARGV[1])",
        BUILDER + "redis.call('GET', family_key(ARGV[1], 'x'))",
        "local levels = { { KEYS[1], 'a' }, { ARGV[1], 'b' } }\n"
        "for _, level in ipairs(levels) do redis.call('EXISTS', level[1]) end",
        "local key = KEYS[1]\nlocal key = ARGV[1]\nredis.call('GET', key)",
    ],
)
def test_the_reader_refuses_a_key_built_any_other_way(code: str) -> None:
    assert key_problems(code), code


@pytest.mark.parametrize(
    "code",
    [
        "redis.call('GET', KEYS[1])",
        "local run_key, index_key = KEYS[3], KEYS[4]\nredis.call('ZADD', index_key, 1, run_key)",
        "local K = { due = KEYS[3] }\nredis.call('ZADD', K.due, 1, 'f')",
        BUILDER + "local K = { lease = KEYS[14] }\n"
        "local function lease_key(flow) return family_key(K.lease, flow) end\n"
        "redis.call('GET', lease_key(ARGV[9]))",
        "local function put(key) redis.call('SET', key, 1) end\nput(KEYS[1])\nput(KEYS[2])",
        "local levels = { { KEYS[1], 'a' }, { KEYS[2], 'b' } }\n"
        "for _, level in ipairs(levels) do redis.call('EXISTS', level[1]) end",
        "redis.call('DEL', KEYS[1], KEYS[2])",
    ],
)
def test_the_reader_accepts_declared_keys_and_families(code: str) -> None:
    assert key_problems(code) == []


@pytest.mark.parametrize(
    ("code", "found"),
    [
        ("local t = 'org.openintegrationhub.flow.execution.failed'", True),
        ("local EVENTS = {throttle = 'tenant.throttled'}", True),
        ("local prefix = 'flow.execution.'", True),
        ("local t = ARGV[18]", False),
        ("emit('admitted', data)", False),
    ],
)
def test_the_reader_finds_event_type_literals(code: str, found: bool) -> None:
    assert bool(event_type_literals(code)) is found


# What the scripts build at run time is what shared/keys.py names, byte for byte.
ODD = {"tenant": "t:1{x}", "user": "u:2", "flow": "f:3"}  # separators and braces in the ids


def test_run_time_admission_keys_are_the_keys_py_names(redis: Redis, clock: FakeClock) -> None:
    adm = Admission(redis, clock, policy(slots=1))
    adm.deploy(ODD["flow"])
    results = [adm.submit(ODD["tenant"], ODD["flow"], user=ODD["user"]) for _ in range(3)]
    assert results == ["admitted", "deferred", "deferred"]
    flow = FlowDocument.parse(
        {
            "id": ODD["flow"],
            "tenant": ODD["tenant"],
            "owners": [{"id": ODD["user"], "type": "user"}],
            "cron": "*/5 * * * *",
            "graph": {"nodes": [{"id": "a", "componentId": "c", "function": "f"}]},
        }
    )
    inputs = adm.inputs()
    assert (
        cron.store_schedule(redis, inputs, None, flow, now=clock.now(), source=SOURCE)
        == "scheduled"
    )
    built = {
        keys.waiting_queue(ODD["flow"], ODD["user"]),
        keys.waiting_users(ODD["flow"]),
        keys.fair_users(ODD["tenant"]),
        keys.fair_flows(ODD["tenant"], ODD["user"]),
    }
    present = {k.decode() for k in cast(list[bytes], redis.keys("co:{adm}:*"))}
    assert built <= present
    assert present - built <= set(keys.admission_keys()) | {keys.outbox(keys.ADMISSION)}
    entries = cron.due_entries(redis, clock.now() + 3600)
    assert [entry[0] for entry in entries] == [ODD["flow"]]  # read through the schedule family
