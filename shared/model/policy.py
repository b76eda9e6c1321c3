"""The policy file (docs/architecture.md §10): parsed, validated (unknown keys refused with
their path), defaults merged per tenant. Built-in defaults apply when no file is given."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from shared.errors import PermanentError

METRICS = (
    "runs",
    "run_seconds",
    "step_seconds",
    "messages",
    "bytes",
    "errors",
    "error_ratio",
    "deploys",
    "skipped",
    "cpu_seconds",
    "memory_mib_seconds",
    "net_bytes",
)
SUBJECT_LEVELS = ("tenant", "user", "flow")
LADDER_STEPS = ("warn", "throttle", "deprioritize", "suspend")
OVERLAP_POLICIES = ("skip", "buffer_one", "allow")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?$")


class PolicyError(PermanentError):
    """The policy file is invalid; the message names the path of every bad entry."""


def parse_duration(value: object) -> float:
    """`90s`, `15m`, `1h`, `1d` or a number of seconds → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _DURATION.match(str(value))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration like 30s, 15m, 1h: {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def cpu_millicores(value: str) -> int:
    match = _CPU.match(str(value))
    if not match:
        raise ValueError(f"not a CPU quantity like 100m or 0.5: {value!r}")
    number = float(match.group(1))
    return int(number if match.group(2) else number * 1000)


def memory_mib(value: str) -> float:
    match = _MEMORY.match(str(value))
    if not match:
        raise ValueError(f"not a memory quantity like 64Mi: {value!r}")
    number = float(match.group(1))
    factor = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20}
    factor["G"] = 1e9 / 2**20
    return number * factor.get(match.group(2) or "", 1 / 2**20)


@dataclass(frozen=True)
class Resources:
    request: str
    limit: str


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    subject: str
    window: str
    max: float
    min_runs: int = 0

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window)


@dataclass(frozen=True)
class TenantLimits:
    weight: float = 1.0
    max_concurrent_runs: int = 20
    start_rate_per_minute: float = 120.0
    max_waiting_runs: int = 1000
    # Budgets (docs/security.md): over one, the tenant's event is answered 429 naming it.
    max_flows: int = 1000
    max_pending_messages_per_run: int = 10000
    max_queued_bytes: int = 256 * 1024 * 1024
    messages_per_second: float = 200.0
    max_run_seconds: int = 3600
    step_retries: int = 5
    step_timeout_seconds: int = 300
    max_replicas_per_step: int = 5
    max_replicas: int = 50
    cpu: Resources = field(default_factory=lambda: Resources("100m", "500m"))
    memory: Resources = field(default_factory=lambda: Resources("64Mi", "256Mi"))
    overlap_policy: str = "skip"
    catchup_window_seconds: int = 300
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Penalties:
    ladder: tuple[str, ...] = LADDER_STEPS
    throttle_factor: float = 0.25
    deprioritize_factor: float = 0.25
    cooldown: str = "5m"
    max_cooldown: str = "24h"
    decay_after: str = "30m"

    @property
    def cooldown_seconds(self) -> float:
        return parse_duration(self.cooldown)

    @property
    def max_cooldown_seconds(self) -> float:
        return parse_duration(self.max_cooldown)

    @property
    def decay_after_seconds(self) -> float:
        return parse_duration(self.decay_after)


COST_MODES = ("count", "slot_seconds", "dominant")


@dataclass(frozen=True)
class Capacity:
    """The cluster's capacity the dominant share is taken over (None: that resource is not
    counted). Slots are the policy's `slots`; `network` is bytes per second as a quantity
    (`1Gi`: 1 GiB/s), compared with the network rate the tenant's usage reports carry."""

    cpu: str | None = None
    memory: str | None = None
    network: str | None = None

    @property
    def cpu_millicores(self) -> int | None:
        return None if self.cpu is None else cpu_millicores(self.cpu)

    @property
    def memory_mib(self) -> float | None:
        return None if self.memory is None else memory_mib(self.memory)

    @property
    def network_bytes_per_second(self) -> float | None:
        return None if self.network is None else memory_mib(self.network) * 2**20


@dataclass(frozen=True)
class Fairness:
    """What admission's fair queuing charges a tenant for a run (docs/architecture.md, fair
    admission): `count` one unit per run; `slot_seconds` the seconds the run holds its slot
    (estimated at admission from the flow's recent runs, corrected when it ends);
    `dominant` slot-seconds times the run's dominant share of (slots, CPU, memory, network)
    over `capacity` relative to one slot. A departed tenant's lead fades with `half_life`; a run
    waiting longer than `max_wait` is admitted before any other (aging)."""

    cost: str = "slot_seconds"
    half_life: str = "10m"
    max_wait: str = "5m"
    default_run_seconds: float = 30.0
    capacity: Capacity = field(default_factory=Capacity)

    @property
    def half_life_seconds(self) -> float:
        return parse_duration(self.half_life)

    @property
    def max_wait_seconds(self) -> float:
        return parse_duration(self.max_wait)


DEFAULT_RULES = (
    Rule("long-runs", "run_seconds", "tenant", "15m", 36000),
    Rule("chatty-flow", "messages", "flow", "1m", 6000),
    Rule("error-storm", "error_ratio", "flow", "15m", 0.5, min_runs=20),
    Rule("churn", "deploys", "tenant", "1h", 30),
)


@dataclass(frozen=True)
class Policy:
    slots: int = 200
    defaults: TenantLimits = field(default_factory=TenantLimits)
    tenants: Mapping[str, TenantLimits] = field(default_factory=dict)
    rules: tuple[Rule, ...] = DEFAULT_RULES
    penalties: Penalties = field(default_factory=Penalties)
    fairness: Fairness = field(default_factory=Fairness)
    # Components whose pods may write to their root filesystem (every other flow pod's root
    # is read-only; /tmp is writable for all).
    writable_root_components: frozenset[str] = frozenset()

    def tenant(self, tenant: str) -> TenantLimits:
        """The limits of one tenant: its own entry merged over the defaults."""
        return self.tenants.get(tenant, self.defaults)

    def rules_for(self, tenant: str) -> tuple[Rule, ...]:
        """Global rules plus the tenant's own (a tenant rule with a global rule's name wins)."""
        own = self.tenant(tenant).rules
        names = {rule.name for rule in own}
        return tuple(rule for rule in self.rules if rule.name not in names) + own


# ---------------------------------------------------------------- parsing and validation
_LIMIT_FIELDS = {f.name: f for f in fields(TenantLimits)}
_PENALTY_FIELDS = {f.name for f in fields(Penalties)}


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: object, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, "must be a mapping")
            return {}
        return value

    def number(self, value: object, path: str, *, integer: bool, positive: bool = True) -> Any:
        number = (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
        if number is not None and integer and not number.is_integer():
            number = None
        if number is not None and (number < 0 or (positive and number == 0)):
            number = None
        if number is None:
            kind = "integer" if integer else "number"
            self.fail(path, f"must be a {'positive' if positive else 'non-negative'} {kind}")
            return None
        return int(number) if integer else number

    def resources(self, value: object, path: str, parse: Any) -> Resources | None:
        data = self.mapping(value, path)
        for key in data:
            if key not in ("request", "limit"):
                self.fail(f"{path}.{key}", "unknown key")
        try:
            request, limit = str(data["request"]), str(data["limit"])
            if parse(request) > parse(limit):
                self.fail(path, "request must not exceed limit")
            return Resources(request, limit)
        except KeyError as exc:
            self.fail(f"{path}.{exc.args[0]}", "required")
        except ValueError as exc:
            self.fail(path, str(exc))
        return None

    def rule(self, value: object, path: str) -> Rule | None:
        data = self.mapping(value, path)
        allowed = {"name", "metric", "subject", "window", "max", "min_runs"}
        for key in data:
            if key not in allowed:
                self.fail(f"{path}.{key}", "unknown key")
        missing = [k for k in ("name", "metric", "subject", "window", "max") if k not in data]
        for key in missing:
            self.fail(f"{path}.{key}", "required")
        if missing:
            return None
        if data["metric"] not in METRICS:
            self.fail(f"{path}.metric", f"must be one of {', '.join(METRICS)}")
        if data["subject"] not in SUBJECT_LEVELS:
            self.fail(f"{path}.subject", f"must be one of {', '.join(SUBJECT_LEVELS)}")
        try:
            parse_duration(data["window"])
        except ValueError as exc:
            self.fail(f"{path}.window", str(exc))
        limit = self.number(data["max"], f"{path}.max", integer=False, positive=False)
        min_runs = self.number(
            data.get("min_runs", 0), f"{path}.min_runs", integer=True, positive=False
        )
        if limit is None or min_runs is None:
            return None
        return Rule(
            str(data["name"]),
            str(data["metric"]),
            str(data["subject"]),
            str(data["window"]),
            limit,
            min_runs,
        )

    def limits(self, value: object, path: str, base: TenantLimits) -> TenantLimits:
        data = self.mapping(value, path)
        changes: dict[str, Any] = {}
        for key, item in data.items():
            where = f"{path}.{key}"
            if key not in _LIMIT_FIELDS:
                self.fail(where, "unknown key")
            elif key == "rules":
                if not isinstance(item, list):
                    self.fail(where, "must be a list")
                    continue
                rules = [self.rule(r, f"{where}[{i}]") for i, r in enumerate(item)]
                changes[key] = tuple(r for r in rules if r is not None)
            elif key == "cpu":
                changes[key] = self.resources(item, where, cpu_millicores) or base.cpu
            elif key == "memory":
                changes[key] = self.resources(item, where, memory_mib) or base.memory
            elif key == "overlap_policy":
                if item not in OVERLAP_POLICIES:
                    self.fail(where, f"must be one of {', '.join(OVERLAP_POLICIES)}")
                else:
                    changes[key] = item
            else:
                integer = _LIMIT_FIELDS[key].type in ("int", int)
                positive = key not in ("catchup_window_seconds", "step_retries")
                number = self.number(item, where, integer=integer, positive=positive)
                if number is not None:
                    changes[key] = number
        return replace(base, **changes)

    def penalties(self, value: object, path: str) -> Penalties:
        data = self.mapping(value, path)
        changes: dict[str, Any] = {}
        for key, item in data.items():
            where = f"{path}.{key}"
            if key not in _PENALTY_FIELDS:
                self.fail(where, "unknown key")
            elif key == "ladder":
                if (
                    not isinstance(item, list)
                    or not item
                    or any(step not in LADDER_STEPS for step in item)
                ):
                    self.fail(where, f"must be a list of {', '.join(LADDER_STEPS)}")
                else:
                    changes[key] = tuple(item)
            elif key.endswith("_factor"):
                factor = self.number(item, where, integer=False)
                if factor is not None and factor > 1:
                    self.fail(where, "must be at most 1")
                elif factor is not None:
                    changes[key] = factor
            else:
                try:
                    parse_duration(item)
                    changes[key] = str(item)
                except ValueError as exc:
                    self.fail(where, str(exc))
        return replace(Penalties(), **changes)

    def fairness(self, value: object, path: str) -> Fairness:
        data = self.mapping(value, path)
        changes: dict[str, Any] = {}
        for key, item in data.items():
            where = f"{path}.{key}"
            if key == "cost":
                if item not in COST_MODES:
                    self.fail(where, f"must be one of {', '.join(COST_MODES)}")
                else:
                    changes[key] = item
            elif key in ("half_life", "max_wait"):
                try:
                    parse_duration(item)
                    changes[key] = str(item)
                except ValueError as exc:
                    self.fail(where, str(exc))
            elif key == "default_run_seconds":
                number = self.number(item, where, integer=False)
                if number is not None:
                    changes[key] = number
            elif key == "capacity":
                changes[key] = self.capacity(item, where)
            else:
                self.fail(where, "unknown key")
        return replace(Fairness(), **changes)

    def capacity(self, value: object, path: str) -> Capacity:
        data = self.mapping(value, path)
        found: dict[str, str] = {}
        parsers = {"cpu": cpu_millicores, "memory": memory_mib, "network": memory_mib}
        for key, item in data.items():
            where = f"{path}.{key}"
            if key not in parsers:
                self.fail(where, "unknown key")
                continue
            try:
                if parsers[key](str(item)) <= 0:
                    self.fail(where, "must be positive")
                else:
                    found[key] = str(item)
            except ValueError as exc:
                self.fail(where, str(exc))
        return Capacity(**found)


def parse_policy(document: object) -> Policy:
    checker = _Checker()
    data = checker.mapping(document, "policy")
    for key in data:
        if key not in (
            "slots",
            "defaults",
            "tenants",
            "rules",
            "penalties",
            "fairness",
            "writable_root_components",
        ):
            checker.fail(key, "unknown key")
    slots = checker.number(data.get("slots", 200), "slots", integer=True)
    defaults = checker.limits(data.get("defaults"), "defaults", TenantLimits())
    tenants = {
        str(name): checker.limits(entry, f"tenants.{name}", defaults)
        for name, entry in checker.mapping(data.get("tenants"), "tenants").items()
    }
    rules: tuple[Rule, ...] = DEFAULT_RULES
    if "rules" in data:
        if isinstance(data["rules"], list):
            parsed = [checker.rule(r, f"rules[{i}]") for i, r in enumerate(data["rules"])]
            rules = tuple(r for r in parsed if r is not None)
        else:
            checker.fail("rules", "must be a list")
    penalties = checker.penalties(data.get("penalties"), "penalties")
    fairness = checker.fairness(data.get("fairness"), "fairness")
    writable = data.get("writable_root_components") or []
    if not isinstance(writable, list) or not all(isinstance(c, str) and c for c in writable):
        checker.fail("writable_root_components", "must be a list of component ids")
        writable = []
    if checker.problems:
        raise PolicyError(
            "invalid policy: " + "; ".join(checker.problems), problems=checker.problems
        )
    return Policy(
        slots=slots or 200,
        defaults=defaults,
        tenants=tenants,
        rules=rules,
        penalties=penalties,
        fairness=fairness,
        writable_root_components=frozenset(writable),
    )


def load_policy(path: str | None) -> Policy:
    """The policy file at `path`, or the built-in defaults when no path is set."""
    if path is None:
        return Policy()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PolicyError(f"ORCHESTRATOR_POLICY_FILE: cannot read {path}: {exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"ORCHESTRATOR_POLICY_FILE: not YAML: {exc}") from exc
    return parse_policy(document or {})
