"""Lua scripts (DESIGN §5): a header each, loaded once, EVALSHA with NOSCRIPT reload."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from redis import Redis

from shared import keys
from shared.errors import TemporaryError
from shared.events import FlowDocument
from shared.model import flows
from shared.scripts import ScriptError, load_script, script_source

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


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_script_has_a_header_naming_keys_argv_and_return(name: str) -> None:
    header = _header(name)
    assert header.startswith(f"-- {name}:"), "the first line names the script"
    for word in ("KEYS", "ARGV", "Return"):
        assert word in header, f"{name}.lua: header does not describe {word}"


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


def test_a_script_is_registered_once_per_client(redis: Redis) -> None:
    script = load_script("flow_upsert")
    assert load_script("flow_upsert") is script
    flows.upsert(redis, _flow(), None)
    first = script._registered[id(redis)]
    flows.upsert(redis, _flow(flow_id="f2"), None)
    assert script._registered[id(redis)] is first
    assert redis.script_exists(first.sha) == [True]


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
