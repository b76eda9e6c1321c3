"""Lua scripts (docs/architecture.md §6): a header each, loaded once, EVALSHA with NOSCRIPT
reload."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from redis import Redis

from shared import keys, store
from shared.errors import TemporaryError
from shared.events import FlowDocument
from shared.model import flows
from shared.scripts import ScriptCall, ScriptError, load_script, run_pipelined, script_source

pytestmark = pytest.mark.redis_cluster  # also on a real 3-master Redis Cluster

SCRIPTS_DIR = resources.files("shared.scripts")
ALL = sorted(p.name.removesuffix(".lua") for p in SCRIPTS_DIR.iterdir() if p.name.endswith(".lua"))
INCLUDED = {
    name
    for script in ALL
    for name in re.findall(
        r"^--#include (\w+)", SCRIPTS_DIR.joinpath(f"{script}.lua").read_text(), re.M
    )
}
ENTRY_POINTS = [name for name in ALL if name not in INCLUDED]


def _header(name: str) -> str:
    lines = SCRIPTS_DIR.joinpath(f"{name}.lua").read_text().splitlines()[1:]  # after #!lua
    head = []
    for line in lines:
        if not line.startswith("--") or line.startswith("--#include"):
            break
        head.append(line)
    return "\n".join(head)


def _includes(name: str) -> list[str]:
    """The files `name` includes, directly or through another include."""
    text = SCRIPTS_DIR.joinpath(f"{name}.lua").read_text()
    found: list[str] = []
    for included in re.findall(r"^--#include (\w+)", text, re.M):
        found += [included, *_includes(included)]
    return found


def _described(header: str) -> set[tuple[str, int]]:
    """(KEYS|ARGV, index) a header describes; an open range like `KEYS[14..13+J]` describes
    14 and above."""
    described: set[tuple[str, int]] = set()
    for table, first, last in re.findall(r"(KEYS|ARGV)\[(\d+)(?:\.\.(\d+))?", header):
        end = int(last) if last else int(first)
        described |= {(table, i) for i in range(int(first), end + 1)}
    for table, first in re.findall(r"(KEYS|ARGV)\[(\d+)\.\.\d+\s*\+", header):
        described |= {(table, i) for i in range(int(first), int(first) + 1000)}
    return described


def _used(source: str) -> set[tuple[str, int]]:
    """The literal KEYS[n] / ARGV[n] a script's code (not its comments) reads."""
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    return {(table, int(i)) for table, i in re.findall(r"\b(KEYS|ARGV)\[(\d+)\]", code)}


def _header_problems(name: str, header: str, source: str, included: list[str]) -> list[str]:
    problems = [] if header.startswith(f"-- {name}:") else ["the first line must name the script"]
    if "Return" not in header:
        problems.append("the header does not say what it returns")
    for other in re.findall(r"see (\w+)", header):
        if other not in included:
            problems.append(f"the header points at {other}, which the script does not include")
    described = _described(header)
    for other in included:
        described |= _described(_header(other))
    missing = sorted(_used(source) - described)
    problems += [f"{table}[{i}] is used but no header describes it" for table, i in missing]
    return problems


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_script_has_a_header_naming_its_keys_argv_and_return(name: str) -> None:
    """Every KEYS[n] and ARGV[n] the script (with its includes) reads is described in its
    header or in the header of a file it includes; a "see X" must name an included file."""
    problems = _header_problems(name, _header(name), script_source(name), _includes(name))
    assert problems == [], f"{name}.lua: " + "; ".join(problems)


@pytest.mark.parametrize(
    ("header", "source", "included", "problem"),
    [
        ("-- s: x\n-- KEYS, ARGV: see flow_start_common\n-- Returns: 1", "KEYS[3]", [], "include"),
        ("-- s: x\n-- KEYS[1] a\n-- Returns: 1", "return KEYS[2]", [], "KEYS[2]"),
        ("-- s: x\n-- ARGV[1..2] a\n-- Returns: 1", "ARGV[3]", [], "ARGV[3]"),
        ("-- s: x\n-- KEYS[1] a", "KEYS[1]", [], "returns"),
    ],
)
def test_a_header_that_does_not_describe_the_script_is_refused(
    header: str, source: str, included: list[str], problem: str
) -> None:
    assert problem in " ".join(_header_problems("s", header, source, included))


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_script_loads_into_redis(redis: Redis, name: str) -> None:
    """Includes resolve and the whole text compiles (SCRIPT LOAD parses it)."""
    source = script_source(name)
    assert "--#include" not in source
    assert redis.script_load(source)


def _flow(updated: str = "2026-01-01T00:00:00Z", flow_id: str = "f1") -> FlowDocument:
    return FlowDocument.parse(
        {
            "id": flow_id,
            "tenant": "acme",
            "updatedAt": updated,
            "graph": {"nodes": [{"id": "a", "componentId": "c"}]},
        }
    )


def test_upsert_and_tombstone_work_after_script_flush(redis: Redis) -> None:
    assert flows.upsert(redis, _flow(), None) == "stored"
    redis.script_flush()  # a failover or restart forgets every script
    assert flows.upsert(redis, _flow("2026-01-02T00:00:00Z"), None) == "stored"
    redis.script_flush()
    assert flows.tombstone(redis, "f1", 1767400000.0) == "stopped"
    redis.script_flush()
    assert flows.upsert(redis, _flow("2026-01-01T12:00:00Z"), None) == "stale"


def test_a_script_is_registered_once_and_serves_every_client(redis: Redis) -> None:
    """One `Script` per file and process; each call names its client (a client, another client
    of the same server, a pipeline), and Redis learns the body on first use."""
    script = load_script("flow_upsert")
    assert load_script("flow_upsert") is script
    registered = script.script
    assert redis.script_exists(registered.sha) == [False]
    flows.upsert(redis, _flow(), None)
    assert redis.script_exists(registered.sha) == [True]
    other = store.slot_client(redis, keys.flow_document("f2"))  # another client of a server
    flows.upsert(other, _flow(flow_id="f2"), None)
    assert load_script("flow_upsert").script is registered


def test_pipelined_calls_load_a_flushed_script_and_keep_their_order(redis: Redis) -> None:
    for flow_id in ("f1", "f2", "f3"):
        flows.upsert(redis, _flow(flow_id=flow_id), None)
    calls = [
        ScriptCall(
            "flow_tombstone",
            [keys.flow_document(f), keys.flow_index(), keys.tenant_flows_family()],
            [f, "1767400000.0", ""],
        )
        for f in ("f1", "f2", "f3")
    ]
    calls.insert(
        1,
        ScriptCall(
            "flow_tombstone",
            [keys.flow_document("new"), keys.flow_index(), keys.tenant_flows_family()],
            ["new", "1", ""],
        ),
    )
    redis.script_flush()  # the pipeline loads it before executing
    replies = [r.decode() for r in run_pipelined(redis, calls, batch=3)]
    assert replies == ["stopped", "unknown", "stopped", "stopped"]
    assert redis.smembers(keys.flow_index()) == set()


def test_a_failing_pipelined_script_raises_our_temporary_error(redis: Redis) -> None:
    redis.set(keys.flow_document("f1"), "not a hash")
    call = ScriptCall(
        "flow_tombstone",
        [keys.flow_document("f1"), keys.flow_index(), keys.tenant_flows_family()],
        ["f1", "1"],
    )
    with pytest.raises(ScriptError):
        run_pipelined(redis, [call])


def test_a_failing_script_raises_our_temporary_error(redis: Redis) -> None:
    redis.set(keys.flow_document("f1"), "not a hash")  # WRONGTYPE inside the script
    with pytest.raises(ScriptError) as caught:
        flows.upsert(redis, _flow(), None)
    assert isinstance(caught.value, TemporaryError) and caught.value.status == 503
    assert "flow_upsert" in caught.value.message


def test_an_unreachable_redis_is_temporary() -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from shared.local.embedded_redis import free_port

    dead = Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    with pytest.raises(TemporaryError):
        flows.upsert(dead, _flow(), None)
