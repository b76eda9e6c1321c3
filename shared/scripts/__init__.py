"""Lua scripts: one `.lua` file per atomic decision, registered once, called by SHA.

redis-py's `Script` object sends EVALSHA and, on NOSCRIPT (after SCRIPT FLUSH or a
failover), loads the body again and retries; in a pipeline it loads missing scripts before
executing. That is the behaviour we want, so every call goes through one `LuaScript`: alone
(`load_script(name)(client, keys, args)` or `run_script`) or pipelined (`run_pipelined`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import store
from shared.errors import TemporaryError

KeyT = str
ArgT = str | int | float | bytes


class ScriptError(TemporaryError):
    """A Lua script failed in Redis (a bug or a broken connection): retried later."""


_INCLUDE = re.compile(r"^--#include ([A-Za-z0-9_]+)[ \t]*$", re.MULTILINE)
SHEBANG = "#!lua"


def split_shebang(name: str, text: str) -> tuple[str, str]:
    """The shebang line and the rest of a script file's text. Every file starts with `#!lua`:
    Redis 7 (and Valkey) then refuse a key of another slot than the declared keys' in a
    cluster, so a script cannot silently reach outside its hash tag."""
    first, _, rest = text.partition("\n")
    if first.split(" ")[0] != SHEBANG:
        raise ValueError(f"{name}.lua: the first line must be the {SHEBANG} shebang")
    return first, rest


def _read(name: str) -> tuple[str, str]:
    return split_shebang(
        name, resources.files("shared.scripts").joinpath(f"{name}.lua").read_text()
    )


def _expanded(name: str) -> str:
    """The text after the shebang, a line `--#include other` replaced by `other.lua`'s."""
    return _INCLUDE.sub(lambda match: _expanded(match.group(1)), _read(name)[1])


@functools.cache
def script_source(name: str) -> str:
    """The script's text: its shebang first, then its body with every `--#include other`
    replaced by `other.lua` without that file's shebang (shared Lua helpers of several scripts
    live in one file instead of being copied)."""
    return _read(name)[0] + "\n" + _expanded(name)


@dataclass(frozen=True)
class ScriptCall:
    """One prepared call of a script, to run alone or pipelined with others."""

    script: str
    keys: Sequence[KeyT]
    args: Sequence[ArgT]


class LuaScript:
    """One Lua file, registered once per process the redis-py way: a `Script` whose SHA is known
    up front, called with `client=` (a client or a pipeline). Redis loads the body on first use
    and again after SCRIPT FLUSH or a failover (NOSCRIPT → SCRIPT LOAD, retried)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = script_source(name)
        # Bytes need no client encoder, so no client is registered: every call names its own.
        self.script = Script(None, self.source.encode())  # type: ignore[arg-type]

    def __call__(self, client: Redis, keys: Sequence[KeyT], args: Sequence[ArgT]) -> Any:
        with _script_errors(self.name):
            return self.script(keys=list(keys), args=list(args), client=client)

    def queue(self, pipe: Pipeline, keys: Sequence[KeyT], args: Sequence[ArgT]) -> None:
        """Adds the call to `pipe` (the pipeline loads the script first if Redis lacks it)."""
        self.script(keys=list(keys), args=list(args), client=pipe)


@contextmanager
def _script_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise TemporaryError(f"redis unavailable running {what}") from exc
    except ResponseError as exc:
        raise ScriptError(f"script {what} failed: {exc}") from exc


@functools.cache
def load_script(name: str) -> LuaScript:
    """The script `shared/scripts/<name>.lua`, loaded once per process."""
    return LuaScript(name)


def run_script(client: Redis, call: ScriptCall) -> Any:
    return load_script(call.script)(client, call.keys, call.args)


def run_pipelined(client: Redis, calls: Iterable[ScriptCall], *, batch: int = 500) -> list[Any]:
    """Runs the calls in order, `batch` per round trip: the same as one by one (each script is
    atomic on its own, a pipeline is no transaction), for bulk work. Every call's keys share
    one hash tag (a cluster pipeline refuses scripts: the pipeline goes to that slot's node)."""
    results: list[Any] = []
    pending = 0
    pipe: Pipeline | None = None
    with _script_errors("pipelined scripts"):
        for call in calls:
            if pipe is None:  # on a cluster: the node of the calls' slot (they share a tag)
                pipe = store.slot_client(client, call.keys[0]).pipeline(transaction=False)
            load_script(call.script).queue(pipe, call.keys, call.args)
            pending += 1
            if pending >= batch:
                results += pipe.execute()
                pending = 0
        if pending and pipe is not None:
            results += pipe.execute()
    return results
