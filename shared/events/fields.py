"""Payloads declared once: a frozen dataclass whose fields carry their wire name and limits.

From that one declaration come both the reader (`read`, which checks every field and collects
every problem, each named by its path such as `graph.nodes[1].id`) and the JSON Schema
(`json_schema`, published under docs/schemas/). The Python type of a field says what the wire
holds: `str`, `int`, `float`, `bool`, `X | None` (optional; JSON null counts as absent),
`dict[str, X]`, `list[Any]`, `tuple[Nested, ...]`, a nested declared dataclass, or `Any`.
A field without a default is required.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Union

_ABSENT = object()

# The placeholder a field takes after a problem: the instance is thrown away (parse raises),
# but nested checks still run on it, so every problem of the document is reported at once.
_FALLBACK: dict[object, Any] = {str: "", int: 0, float: 0.0, bool: False}


def wire(
    name: str | None = None,
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    pattern: tuple[str, str] | None = None,
    min_items: tuple[int, str] | None = None,
    description: str = "",
    on_wire: bool = True,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A payload field. `name`: its JSON name (default: the attribute's); `pattern`: (regex,
    the problem when it does not match); `min_items`: (count, the problem when fewer);
    `on_wire=False`: not read from the event (a hook fills it in); `aliases`: other names the
    field may arrive under (read when the name itself is absent; we always write the name)."""
    metadata = {
        "json": name,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "pattern": pattern,
        "min_items": min_items,
        "description": description,
        "on_wire": on_wire,
        "aliases": aliases,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Problems:
    """The problems found so far, and the path they are named under."""

    def __init__(self, path: str = "", found: list[str] | None = None) -> None:
        self.path = path
        self.found: list[str] = [] if found is None else found

    def name(self, key: str) -> str:
        if not self.path:
            return key
        return f"{self.path}{key}" if key.startswith("[") else f"{self.path}.{key}"

    def at(self, key: str) -> Problems:
        return Problems(self.name(key), self.found)

    def add(self, key: str, message: str) -> None:
        self.found.append(f"{self.name(key)}: {message}")

    def here(self, message: str) -> None:
        self.found.append(f"{self.path or 'data'}: {message}")


# --------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Spec:
    """One field as read from its declaration."""

    attr: str
    key: str
    kind: Any  # the Python type without `| None`
    optional: bool  # `X | None`: absent is None
    required: bool
    default: Callable[[], Any] | None
    meta: Mapping[str, Any]


_SPECS: dict[type, tuple[Spec, ...]] = {}


def is_declared(kind: object) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def specs(cls: type) -> tuple[Spec, ...]:
    cached = _SPECS.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, optional = _unwrap_optional(hints[f.name])
        default: Callable[[], Any] | None = None
        if f.default is not MISSING:
            value = f.default
            default = lambda value=value: value  # noqa: E731
        elif f.default_factory is not MISSING:
            default = f.default_factory
        out.append(
            Spec(
                attr=f.name,
                key=f.metadata.get("json") or f.name,
                kind=kind,
                optional=optional,
                required=default is None,
                default=default,
                meta=f.metadata,
            )
        )
    _SPECS[cls] = result = tuple(out)
    return result


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


# --------------------------------------------------------------------------- reading
def read(cls: type, data: object, problems: Problems) -> Any:
    """An instance of the declared `cls` from JSON `data`; every problem goes to `problems`."""
    if not isinstance(data, Mapping):
        problems.here("must be an object")
        data = {}
    values: dict[str, Any] = {}
    for spec in specs(cls):
        if not spec.meta.get("on_wire", True):
            values[spec.attr] = spec.default() if spec.default else None
            continue
        value = data.get(spec.key, _ABSENT)
        for alias in spec.meta.get("aliases", ()):
            if value is _ABSENT or value is None:
                value = data.get(alias, _ABSENT)
        values[spec.attr] = _read_field(spec, value, problems)
    instance = cls(**values)
    finish = getattr(instance, "finish", None)
    return finish(data, problems) if finish is not None else instance


def _read_field(spec: Spec, value: Any, problems: Problems) -> Any:
    if value is _ABSENT or value is None:
        if spec.required:
            problems.add(spec.key, "required")
            return _fallback(spec.kind, problems.at(spec.key))
        return spec.default() if spec.default else None
    ok, result = _check(spec.kind, value, spec, problems.at(spec.key), required=spec.required)
    if ok:
        return result
    if spec.required:
        return _fallback(spec.kind, problems.at(spec.key))
    return spec.default() if spec.default else None


def _fallback(kind: Any, problems: Problems) -> Any:
    if is_declared(kind):
        silent = Problems(problems.path, [])
        instance = read(kind, {}, silent)
        problems.found.extend(p for p in silent.found if p.endswith(": required"))
        return instance
    origin = typing.get_origin(kind)
    if origin is tuple:
        return ()
    if origin is dict or kind is dict:
        return {}
    if origin is list or kind is list:
        return []
    return _FALLBACK.get(kind)


def _check(
    kind: Any, value: Any, spec: Spec | None, at: Problems, *, required: bool = False
) -> tuple[bool, Any]:
    """(True, the value as stored) or (False, None) with the problem added at `at`."""
    meta: Mapping[str, Any] = spec.meta if spec is not None else {}
    if kind is Any:
        return True, value
    if kind is str:
        return _check_string(value, meta, at, required=required)
    if kind is bool:
        if not isinstance(value, bool):
            at.here(f"must be true or false, got {value!r}")
            return False, None
        return True, value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            at.here(f"must be an integer, got {value!r}")
            return False, None
        return _check_range(value, meta, at)
    if kind is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            at.here(f"must be a number, got {value!r}")
            return False, None
        return _check_range(float(value), meta, at)
    if is_declared(kind):
        return True, read(kind, value, at)
    origin = typing.get_origin(kind) or kind
    if origin is dict:
        if not isinstance(value, Mapping):
            at.here(f"must be an object, got {type(value).__name__}")
            return False, None
        args = typing.get_args(kind)
        item = args[1] if len(args) == 2 else Any
        out, ok = {}, True
        for key, element in value.items():
            good, checked = _check(item, element, spec, at.at(str(key)))
            ok = ok and good
            if good:
                out[key] = checked
        return ok, out
    if origin in (list, tuple):
        if not isinstance(value, list):
            at.here(f"must be a list, got {type(value).__name__}")
            return False, None
        args = typing.get_args(kind)
        item = args[0] if args else Any
        count = len(at.found)
        items = [_check(item, element, None, at.at(f"[{i}]"))[1] for i, element in enumerate(value)]
        least = meta.get("min_items")
        if least is not None and len(value) < least[0]:
            at.here(least[1])
        ok = len(at.found) == count
        return ok, tuple(items) if origin is tuple else items
    raise TypeError(f"{at.path}: undeclarable field type {kind!r}")


def _check_string(
    value: Any, meta: Mapping[str, Any], at: Problems, *, required: bool
) -> tuple[bool, Any]:
    if not isinstance(value, str):
        at.here(f"must be a string, got {type(value).__name__}")
        return False, None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        at.here(f"must be one of {', '.join(choices)}, got {value!r}")
        return False, None
    if required and not value.strip():
        at.here("must not be empty")
        return False, None
    pattern = meta.get("pattern")
    if pattern is not None and value and not re.fullmatch(pattern[0], value):
        at.here(pattern[1])
        return False, None
    return True, value


def _check_range(value: float, meta: Mapping[str, Any], at: Problems) -> tuple[bool, Any]:
    minimum, maximum = meta.get("minimum"), meta.get("maximum")
    if minimum is not None and value < minimum:
        at.here(f"must be >= {minimum}, got {value}")
        return False, None
    if maximum is not None and value > maximum:
        at.here(f"must be <= {maximum}, got {value}")
        return False, None
    return True, value


# --------------------------------------------------------------------------- writing
def to_data(instance: object) -> dict[str, Any]:
    """The JSON object of a declared instance; None (absent) fields are left out."""
    out: dict[str, Any] = {}
    for spec in specs(type(instance)):
        if not spec.meta.get("on_wire", True):
            continue
        value = getattr(instance, spec.attr)
        if value is not None:
            out[spec.key] = _to_json(value)
    return out


def _to_json(value: Any) -> Any:
    if is_declared(type(value)):
        to = getattr(value, "to_data", None)
        return to() if to is not None else to_data(value)
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


# --------------------------------------------------------------------------- JSON Schema
def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema (2020-12) of a declared payload; nested declarations go into $defs."""
    defs: dict[str, Any] = {}
    body = _object_schema(cls, defs)
    schema: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema["title"] = cls.__name__
    schema.update(body)
    if defs:
        schema["$defs"] = dict(sorted(defs.items()))
    return schema


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    either: list[dict[str, Any]] = []
    for spec in specs(cls):
        if not spec.meta.get("on_wire", True):
            continue
        prop = _schema(spec.kind, spec.meta, defs, required=spec.required)
        if spec.meta.get("description"):
            prop = {"description": spec.meta["description"], **prop}
        if not spec.required:
            default = spec.default() if spec.default else None
            if isinstance(default, str | int | float | bool) and not is_declared(spec.kind):
                prop["default"] = default
            prop = {"anyOf": [prop, {"type": "null"}]} if "$ref" in prop else _nullable(prop)
        elif spec.meta.get("aliases"):
            names = (spec.key, *spec.meta["aliases"])
            either.append({"anyOf": [{"required": [name]} for name in names]})
        else:
            required.append(spec.key)
        properties[spec.key] = prop
        for alias in spec.meta.get("aliases", ()):
            properties[alias] = {"description": f"read as `{spec.key}` when that is absent"}
            properties[alias].update({k: v for k, v in prop.items() if k != "description"})
    doc = (cls.__doc__ or "").strip().splitlines()
    out: dict[str, Any] = {"description": doc[0]} if doc else {}
    out.update({"type": "object", "properties": properties})
    if required:
        out["required"] = required
    extra = getattr(cls, "schema_rules", None)
    rules = [*either, *(extra() if extra is not None else [])]
    if len(rules) == 1:
        out.update(rules[0])
    elif rules:
        out["allOf"] = rules
    return out


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    if "enum" in prop:
        prop = {**prop, "enum": [*prop["enum"], None]}
    if "type" in prop:
        return {**prop, "type": [prop["type"], "null"]}
    return prop  # Any: null already allowed


def _schema(kind: Any, meta: Mapping[str, Any], defs: dict[str, Any], *, required: bool) -> Any:
    if kind is Any:
        return {}
    if kind is str:
        out: dict[str, Any] = {"type": "string"}
        if meta.get("choices") is not None:
            out["enum"] = list(meta["choices"])
        elif meta.get("pattern") is not None:
            out["pattern"] = "^(" + meta["pattern"][0] + ")$"
        elif required:
            out["pattern"] = r"\S"  # not blank
        return out
    if kind is bool:
        return {"type": "boolean"}
    if kind in (int, float):
        out = {"type": "integer" if kind is int else "number"}
        for bound in ("minimum", "maximum"):
            if meta.get(bound) is not None:
                out[bound] = meta[bound]
        return out
    if is_declared(kind):
        if kind.__name__ not in defs:
            defs[kind.__name__] = {}  # recursion guard
            defs[kind.__name__] = _object_schema(kind, defs)
        return {"$ref": f"#/$defs/{kind.__name__}"}
    origin = typing.get_origin(kind) or kind
    args = typing.get_args(kind)
    if origin is dict:
        out = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            out["additionalProperties"] = _schema(args[1], meta, defs, required=False)
        return out
    if origin in (list, tuple):
        out = {"type": "array"}
        if args and args[0] is not Any:
            out["items"] = _schema(args[0], {}, defs, required=False)
        if meta.get("min_items") is not None:
            out["minItems"] = meta["min_items"][0]
        return out
    raise TypeError(f"undeclarable field type {kind!r}")
