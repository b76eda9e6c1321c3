"""A small static reader of our Lua scripts, for the rules every script keeps.

- Keys: every key a script touches is a `KEYS[i]`, or `family_key(KEYS[i], id)` (keys_common.lua:
  a key family declared in shared/keys.py plus an id, so the key keeps a declared key's hash tag).
  A key position (the key arguments of `redis.call` / `redis.pcall`, the family of `family_key`)
  is followed back through locals, table fields, function parameters (to every call site) and
  function returns; anything else there (a literal, `..`, ARGV, string functions) breaks the rule.
- Event types: no string literal names an event type; they come from shared/events/types.py.

The reader knows just enough Lua for our scripts (locals, one-level tables, `local function`,
`for ... in ipairs`); what it cannot follow is a violation, never silently accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.events import types

# Commands whose every argument is a key; every other command's first argument is its key.
ALL_KEYS_COMMANDS = frozenset({"DEL", "UNLINK", "EXISTS", "TOUCH", "MGET", "WATCH"})
FAMILY_BUILDER = "family_key"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_LITERAL = re.compile(r"^\x00(\d+)\x00$")
_EVENT_TYPE_LIKE = re.compile(
    r"^(flow|component|tenant|policy|usage|step|orchestrator)\.([a-z]+\.?)*$"
)


@dataclass
class Lua:
    """A script's code with comments removed and string literals replaced by `\\0n\\0`."""

    code: str
    literals: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, source: str) -> Lua:
        out: list[str] = []
        literals: list[str] = []
        i = 0
        while i < len(source):
            char = source[i]
            if source.startswith("--[[", i):
                i = source.index("]]", i) + 2
            elif source.startswith("--", i) or (char == "#" and source.startswith("#!", i)):
                end = source.find("\n", i)
                i = len(source) if end < 0 else end
            elif char in "'\"":
                j = i + 1
                text = []
                while source[j] != char:
                    if source[j] == "\\":
                        text.append(source[j : j + 2])
                        j += 2
                    else:
                        text.append(source[j])
                        j += 1
                literals.append("".join(text))
                out.append(f"\x00{len(literals) - 1}\x00")
                i = j + 1
            else:
                out.append(char)
                i += 1
        return cls("".join(out), literals)

    def literal(self, expr: str) -> str | None:
        match = _LITERAL.match(expr.strip())
        return self.literals[int(match.group(1))] if match else None


def split_top(text: str, sep: str = ",") -> list[str]:
    """`text` split at `sep` outside brackets (an argument list, a table's fields)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    tail = "".join(current).strip()
    if tail or parts:
        parts.append(tail)
    return parts


def closing(text: str, start: int) -> int:
    """Index of the bracket closing the one at `start`."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced bracket at {start}")


def calls(code: str, name: str) -> Iterator[tuple[int, list[str]]]:
    """(position, arguments) of every call `name(...)` (not its definition)."""
    for match in re.finditer(rf"(?<![\w.:]){re.escape(name)}\s*\(", code):
        before = code[max(0, match.start() - 9) : match.start()]
        if before.rstrip().endswith("function"):
            continue
        open_at = match.end() - 1
        yield match.start(), split_top(code[open_at + 1 : closing(code, open_at)])


def _expression_at(code: str, start: int) -> str:
    """The expression starting at `start`: to the end of the line, or further while brackets
    are open or the line ends with an operator."""
    i, depth = start, 0
    while i < len(code):
        char = code[i]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "\n" and depth <= 0:
            line = code[start:i].rstrip()
            if not re.search(r"(\.\.|,|\band|\bor|[-+*/=<>])$", line):
                break
        i += 1
    return code[start:i].strip()


@dataclass
class Checker:
    lua: Lua
    problems: list[str] = field(default_factory=list)
    _checking: set[str] = field(default_factory=set)
    _judged: dict[str, bool] = field(default_factory=dict)

    # --- where names get their values -------------------------------------------------------
    def assignments(self, name: str) -> list[str]:
        """Every value assigned to `name` (`local a, name = x, y` and `name = y`)."""
        found = []
        names = rf"(?:{_IDENT}\s*,\s*)*{re.escape(name)}(?:\s*,\s*{_IDENT})*"
        pattern = rf"(?<![\w.:])(local\s+)?({names})\s*=(?!=)"
        for match in re.finditer(pattern, self.lua.code):
            if re.search(r"\bfor\s+$", self.lua.code[max(0, match.start() - 5) : match.start()]):
                continue
            assigned = [n.strip() for n in match.group(2).split(",")]
            values = split_top(_expression_at(self.lua.code, match.end()))
            index = assigned.index(name)
            found.append(values[index] if index < len(values) else "nil")
        return found

    def parameters(self, name: str) -> list[tuple[str, int]]:
        """(function, position) of every function with a parameter `name`."""
        found = []
        for match in re.finditer(rf"function\s+({_IDENT})\s*\(([^)]*)\)", self.lua.code):
            params = [p.strip() for p in match.group(2).split(",")]
            if name in params:
                found.append((match.group(1), params.index(name)))
        return found

    def loop_sources(self, name: str) -> list[str]:
        """The table expressions `for _, name in ipairs(<expr>)` walks."""
        pattern = rf"\bfor\s+{_IDENT}\s*,\s*{re.escape(name)}\s+in\s+ipairs\s*\("
        found = []
        for match in re.finditer(pattern, self.lua.code):
            open_at = match.end() - 1
            found.append(self.lua.code[open_at + 1 : closing(self.lua.code, open_at)])
        return found

    def returns(self, function: str) -> list[str]:
        match = re.search(rf"function\s+{re.escape(function)}\s*\([^)]*\)", self.lua.code)
        if match is None:
            return []
        depth, i, body_start = 1, match.end(), match.end()
        words = re.compile(r"\b(function|if|do|repeat|end|until|while|for)\b")
        while depth and (word := words.search(self.lua.code, i)):
            if word.group(1) in ("function", "if", "do", "repeat"):
                depth += 1
            elif word.group(1) in ("end", "until"):
                depth -= 1
            i = word.end()
        body = self.lua.code[body_start:i]
        return [
            _expression_at(body, m.end()).removesuffix("end").strip()
            for m in re.finditer(r"\breturn\b", body)
        ]

    # --- tables ------------------------------------------------------------------------------
    def table_values(self, expr: str, path: list[str]) -> list[str] | None:
        """The values at `path` (fields or integer indexes) of the table `expr` evaluates to;
        None when the table cannot be followed."""
        expr = expr.strip()
        if not path:
            return [expr]
        if expr.startswith("{") and closing(expr, 0) == len(expr) - 1:
            fields = split_top(expr[1:-1])
            step, rest = path[0], path[1:]
            if step == "*":
                chosen = [f for f in fields if f]
            elif step.isdigit():
                positional = [f for f in fields if not re.match(rf"^{_IDENT}\s*=(?!=)", f)]
                chosen = positional[int(step) - 1 : int(step)]
            else:
                chosen = [f.split("=", 1)[1] for f in fields if re.match(rf"^{step}\s*=(?!=)", f)]
            if not chosen:
                return None
            values: list[str] = []
            for value in chosen:
                inner = self.table_values(value, rest)
                if inner is None:
                    return None
                values.extend(inner)
            return values
        values = []
        for source in self.sources(expr):
            inner = self.table_values(source, path)
            if inner is None:
                return None
            values.extend(inner)
        return values or None

    def sources(self, expr: str) -> list[str]:
        """What a name or a call evaluates to (its assignments, or the function's returns)."""
        if re.fullmatch(_IDENT, expr):
            found = self.assignments(expr)
            for table in self.loop_sources(expr):
                found.extend(self.table_values(table, ["*"]) or [])
            return found
        call = re.fullmatch(rf"({_IDENT})\s*\((.*)\)", expr, re.S)
        if call and closing(expr, expr.index("(")) == len(expr) - 1:
            return self.returns(call.group(1))
        return []

    # --- the key rule ------------------------------------------------------------------------
    def key_ok(self, expr: str, where: str) -> bool:
        expr = expr.strip()
        if expr in self._judged:
            return self._judged[expr]
        if expr in self._checking:
            return True  # a cycle: judged by its other definitions
        self._checking.add(expr)
        try:
            ok = self._key_ok(expr)
        finally:
            self._checking.discard(expr)
        self._judged[expr] = ok
        if not ok:
            self.problems.append(f"{where}: key `{self._show(expr)}` is not a KEYS entry")
        return ok

    def _show(self, expr: str) -> str:
        return re.sub(r"\x00(\d+)\x00", lambda m: repr(self.lua.literals[int(m.group(1))]), expr)

    def _key_ok(self, expr: str) -> bool:
        if re.fullmatch(r"KEYS\[[^\[\]]+\]", expr):
            return True
        call = re.fullmatch(rf"({_IDENT})\s*\((.*)\)", expr, re.S)
        if call and closing(expr, expr.index("(")) == len(expr) - 1:
            if call.group(1) == FAMILY_BUILDER:
                args = split_top(call.group(2))
                return len(args) == 2 and self.key_ok(args[0], "family_key family")
            returns = self.returns(call.group(1))
            return bool(returns) and all(self.key_ok(r, f"{call.group(1)}()") for r in returns)
        if re.fullmatch(_IDENT, expr):
            values = self.assignments(expr)
            for table in self.loop_sources(expr):
                elements = self.table_values(table, ["*"])
                if elements is None:
                    return False
                values.extend(elements)
            params = self.parameters(expr)
            if not values and not params:
                return False
            for function, position in params:
                for _, args in calls(self.lua.code, function):
                    value = args[position] if position < len(args) else "nil"
                    if not self.key_ok(value, f"{function}() argument {position + 1}"):
                        return False
            return all(self.key_ok(v, expr) for v in values)
        access = re.fullmatch(rf"({_IDENT})((?:\.{_IDENT}|\[\d+\])+)", expr)
        if access:
            path = re.findall(rf"\.({_IDENT})|\[(\d+)\]", access.group(2))
            steps = [name or index for name, index in path]
            values = []
            for source in self.sources(access.group(1)):
                found = self.table_values(source, steps)
                if found is None:
                    return False
                values.extend(found)
            return bool(values) and all(self.key_ok(v, expr) for v in values)
        return False

    def check_keys(self) -> list[str]:
        code = self.lua.code
        for name in ("redis.call", "redis.pcall"):
            for _, args in calls(code, name):
                command = (self.lua.literal(args[0]) or "").upper() if args else ""
                key_args = args[1:] if command in ALL_KEYS_COMMANDS else args[1:2]
                for arg in key_args:
                    if arg.startswith("unpack("):
                        continue  # values of a bulk write (bulk()'s items), not keys
                    self.key_ok(arg, f"{name}({self._show(args[0])})")
        for _, args in calls(code, FAMILY_BUILDER):
            self.key_ok(args[0] if args else "", "family_key family")
        return self.problems


def key_problems(source: str) -> list[str]:
    return Checker(Lua.parse(source)).check_keys()


_CATALOGUE = {t for t in types.ALL_TYPES} | {types.short(t) for t in types.ALL_TYPES}


def event_type_literals(source: str) -> list[str]:
    """String literals that name an event type (or a prefix of one) in Lua code."""
    lua = Lua.parse(source)
    return [
        text
        for text in lua.literals
        if text in _CATALOGUE
        or types.PREFIX.rstrip(".") in text
        or (_EVENT_TYPE_LIKE.match(text) and any(t.startswith(text) for t in _CATALOGUE))
    ]
