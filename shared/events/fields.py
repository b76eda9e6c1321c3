"""Reading a JSON object field by field, collecting every problem rather than the first."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_MISSING = object()


class FieldReader:
    """Typed access to one JSON object; problems are named by their path (`graph.nodes[1].id`)."""

    def __init__(self, data: object, path: str = "data", problems: list[str] | None = None):
        self.path = path
        self.problems: list[str] = problems if problems is not None else []
        if isinstance(data, Mapping):
            self.data: Mapping[str, Any] = data
        else:
            self.data = {}
            self.problems.append(f"{path}: must be an object")

    def _name(self, key: str) -> str:
        return key if self.path == "data" else f"{self.path}.{key}"

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self._name(key)}: {message}")

    def _get(self, key: str, required: bool) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.problem(key, "required")
            return _MISSING
        return value

    def string(self, key: str, *, required: bool = True, default: str = "") -> str:
        value = self._get(key, required)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            self.problem(key, f"must be a string, got {type(value).__name__}")
            return default
        if required and not value.strip():
            self.problem(key, "must not be empty")
        return value

    def optional_string(self, key: str) -> str | None:
        value = self._get(key, False)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            self.problem(key, f"must be a string, got {type(value).__name__}")
            return None
        return value

    def integer(
        self,
        key: str,
        *,
        required: bool = True,
        default: int = 0,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._get(key, required)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                self.problem(key, f"must be an integer, got {value!r}")
                return default
        if minimum is not None and value < minimum:
            self.problem(key, f"must be >= {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.problem(key, f"must be <= {maximum}, got {value}")
            return default
        return value

    def number(
        self, key: str, *, required: bool = True, default: float = 0.0, minimum: float | None = None
    ) -> float:
        value = self._get(key, required)
        if value is _MISSING:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.problem(key, f"must be a number, got {value!r}")
            return default
        if minimum is not None and value < minimum:
            self.problem(key, f"must be >= {minimum}, got {value}")
            return default
        return float(value)

    def boolean(self, key: str, *, required: bool = False, default: bool = False) -> bool:
        value = self._get(key, required)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, got {value!r}")
            return default
        return value

    def choice(
        self, key: str, allowed: tuple[str, ...], *, default: str | None = None
    ) -> str | None:
        value = self._get(key, False)
        if value is _MISSING:
            return default
        if value not in allowed:
            self.problem(key, f"must be one of {', '.join(allowed)}, got {value!r}")
            return default
        return str(value)

    def mapping(self, key: str, *, required: bool = False) -> dict[str, Any]:
        value = self._get(key, required)
        if value is _MISSING:
            return {}
        if not isinstance(value, Mapping):
            self.problem(key, f"must be an object, got {type(value).__name__}")
            return {}
        return dict(value)

    def child(self, key: str, *, required: bool = False) -> FieldReader:
        value = self._get(key, required)
        if value is _MISSING:
            value = {}
        return FieldReader(value, self._name(key), self.problems)

    def items(self, key: str, *, required: bool = False) -> list[FieldReader]:
        value = self._get(key, required)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.problem(key, f"must be a list, got {type(value).__name__}")
            return []
        return [
            FieldReader(item, f"{self._name(key)}[{index}]", self.problems)
            for index, item in enumerate(value)
        ]

    def raw(self, key: str, default: Any = None) -> Any:
        """Any JSON value; null counts as absent, so `to_data` (which drops None) round-trips."""
        value = self.data.get(key, _MISSING)
        return default if value is _MISSING or value is None else value
