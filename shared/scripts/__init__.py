"""Lua scripts: one `.lua` file per atomic decision, loaded once, called by SHA.

redis-py's `Script` object sends EVALSHA and, on NOSCRIPT (after SCRIPT FLUSH or a
failover), loads the body again and retries; that is the behaviour we want, so every
wrapper goes through `LuaScript.__call__`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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


class LuaScript:
    """One Lua file; registered once per client, called with EVALSHA (NOSCRIPT → reload)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = script_source(name)
        self._registered: dict[int, Any] = {}

    def _script(self, client: Redis) -> Any:
        script = self._registered.get(id(client))
        if script is None:
            script = client.register_script(self.source)
            self._registered[id(client)] = script
        return script

    def __call__(self, client: Redis, keys: Sequence[KeyT], args: Sequence[ArgT]) -> Any:
        try:
            return self._script(client)(keys=list(keys), args=list(args))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise TemporaryError(f"redis unavailable running {self.name}") from exc
        except ResponseError as exc:
            raise ScriptError(f"script {self.name} failed: {exc}") from exc


@functools.cache
def load_script(name: str) -> LuaScript:
    """The script `shared/scripts/<name>.lua`, loaded once per process."""
    return LuaScript(name)
