"""The policy file (DESIGN §8): validation with paths, defaults merged per tenant."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from shared.model.policy import (
    DEFAULT_RULES,
    Policy,
    PolicyError,
    Rule,
    TenantLimits,
    cpu_millicores,
    load_policy,
    memory_mib,
    parse_duration,
    parse_policy,
)

DESIGN_EXAMPLE = """
slots: 200
defaults:
  weight: 1
  max_concurrent_runs: 20
  start_rate_per_minute: 120
  max_waiting_runs: 1000
  messages_per_second: 200
  max_run_seconds: 3600
  step_retries: 5
  step_timeout_seconds: 300
  max_replicas_per_step: 5
  max_replicas: 50
  cpu: {request: 100m, limit: 500m}
  memory: {request: 64Mi, limit: 256Mi}
  overlap_policy: skip
  catchup_window_seconds: 300
tenants:
  acme: {weight: 3, max_concurrent_runs: 50}
rules:
  - {name: long-runs, metric: run_seconds, subject: tenant, window: 15m, max: 36000}
  - {name: chatty-flow, metric: messages, subject: flow, window: 1m, max: 6000}
  - {name: error-storm, metric: error_ratio, subject: flow, window: 15m, max: 0.5, min_runs: 20}
  - {name: churn, metric: deploys, subject: tenant, window: 1h, max: 30}
penalties:
  ladder: [warn, throttle, deprioritize, suspend]
  throttle_factor: 0.25
  deprioritize_factor: 0.25
  cooldown: 5m
  max_cooldown: 24h
  decay_after: 30m
"""


def test_the_design_example_parses_to_the_built_in_defaults() -> None:
    policy = parse_policy(yaml.safe_load(DESIGN_EXAMPLE))
    assert policy.defaults == TenantLimits()
    assert policy.rules == DEFAULT_RULES
    assert policy.penalties == Policy().penalties
    acme = policy.tenant("acme")
    assert acme.weight == 3 and acme.max_concurrent_runs == 50
    assert acme.max_run_seconds == 3600  # the rest comes from defaults
    assert policy.tenant("unknown") == policy.defaults


def test_no_file_means_built_in_defaults(tmp_path: Path) -> None:
    assert load_policy(None) == Policy()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_policy(str(empty)) == Policy()


def test_a_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("slots: 7\ntenants:\n  acme: {weight: 2}\n")
    policy = load_policy(str(path))
    assert policy.slots == 7 and policy.tenant("acme").weight == 2


@pytest.mark.parametrize(
    ("content", "problem"),
    [("slots: [1, 2", "not YAML"), (None, "cannot read")],
    ids=["not yaml", "missing file"],
)
def test_an_unreadable_file_names_the_variable(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "policy.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PolicyError) as caught:
        load_policy(str(path))
    assert "ORCHESTRATOR_POLICY_FILE" in str(caught.value) and problem in str(caught.value)


INVALID: list[tuple[str, Any, str]] = [
    ("unknown top-level key", {"slot": 3}, "slot: unknown key"),
    ("unknown default", {"defaults": {"wieght": 2}}, "defaults.wieght: unknown key"),
    ("unknown tenant key", {"tenants": {"acme": {"speed": 1}}}, "tenants.acme.speed: unknown key"),
    ("defaults not a mapping", {"defaults": [1]}, "defaults: must be a mapping"),
    ("tenants not a mapping", {"tenants": "acme"}, "tenants: must be a mapping"),
    ("slots zero", {"slots": 0}, "slots: must be a positive integer"),
    ("slots fractional", {"slots": 2.5}, "slots: must be a positive integer"),
    ("slots boolean", {"slots": True}, "slots: must be a positive integer"),
    ("weight negative", {"defaults": {"weight": -1}}, "defaults.weight: must be a positive"),
    ("weight text", {"tenants": {"a": {"weight": "high"}}}, "tenants.a.weight: must be a positive"),
    ("runs fractional", {"defaults": {"max_concurrent_runs": 1.5}}, "max_concurrent_runs"),
    ("overlap unknown", {"defaults": {"overlap_policy": "queue"}}, "defaults.overlap_policy"),
    ("cpu unknown key", {"defaults": {"cpu": {"min": "1"}}}, "defaults.cpu.min: unknown key"),
    ("cpu missing limit", {"defaults": {"cpu": {"request": "1"}}}, "defaults.cpu.limit: required"),
    ("cpu bad quantity", {"defaults": {"cpu": {"request": "x", "limit": "1"}}}, "defaults.cpu"),
    (
        "memory request over limit",
        {"defaults": {"memory": {"request": "1Gi", "limit": "64Mi"}}},
        "defaults.memory: request must not exceed limit",
    ),
    ("rules not a list", {"rules": {"a": 1}}, "rules: must be a list"),
    ("rule unknown key", {"rules": [{**vars(DEFAULT_RULES[0]), "when": 1}]}, "rules[0].when"),
    (
        "rule missing max",
        {"rules": [{"name": "r", "metric": "runs", "subject": "flow", "window": "1m"}]},
        "rules[0].max: required",
    ),
    (
        "rule unknown metric",
        {"rules": [{"name": "r", "metric": "fun", "subject": "flow", "window": "1m", "max": 1}]},
        "rules[0].metric",
    ),
    (
        "rule unknown subject",
        {"rules": [{"name": "r", "metric": "runs", "subject": "org", "window": "1m", "max": 1}]},
        "rules[0].subject",
    ),
    (
        "rule bad window",
        {"rules": [{"name": "r", "metric": "runs", "subject": "flow", "window": "soon", "max": 1}]},
        "rules[0].window",
    ),
    (
        "tenant rule bad",
        {"tenants": {"a": {"rules": [{"name": "r"}]}}},
        "tenants.a.rules[0].metric: required",
    ),
    ("ladder unknown step", {"penalties": {"ladder": ["warn", "jail"]}}, "penalties.ladder"),
    ("ladder empty", {"penalties": {"ladder": []}}, "penalties.ladder"),
    (
        "factor above one",
        {"penalties": {"throttle_factor": 2}},
        "penalties.throttle_factor: must be at most 1",
    ),
    ("factor zero", {"penalties": {"deprioritize_factor": 0}}, "penalties.deprioritize_factor"),
    ("bad cooldown", {"penalties": {"cooldown": "5 minutes"}}, "penalties.cooldown"),
    ("unknown penalty key", {"penalties": {"fine": 10}}, "penalties.fine: unknown key"),
    ("not a mapping at all", ["slots", 3], "policy: must be a mapping"),
    ("unknown cost mode", {"fairness": {"cost": "money"}}, "fairness.cost: must be one of"),
    ("bad half-life", {"fairness": {"half_life": "soon"}}, "fairness.half_life"),
    ("bad aging bound", {"fairness": {"max_wait": 0}}, "fairness.max_wait"),
    ("zero default estimate", {"fairness": {"default_run_seconds": 0}}, "default_run_seconds"),
    ("unknown fairness key", {"fairness": {"fast": 1}}, "fairness.fast: unknown key"),
    ("bad capacity cpu", {"fairness": {"capacity": {"cpu": "lots"}}}, "fairness.capacity"),
    ("zero capacity", {"fairness": {"capacity": {"memory": "0Gi"}}}, "must be positive"),
    ("bad capacity network", {"fairness": {"capacity": {"network": "fast"}}}, "capacity"),
    ("unknown capacity", {"fairness": {"capacity": {"gpu": 1}}}, "capacity.gpu: unknown key"),
]


@pytest.mark.parametrize(
    ("document", "problem"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_a_bad_entry_is_refused_with_its_path(document: Any, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(document)
    assert any(p.startswith(problem) or problem in p for p in caught.value.problems), (
        caught.value.problems
    )


def test_every_bad_entry_is_listed_at_once() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy({"slots": -1, "defaults": {"x": 1}, "tenants": {"t": {"y": 2}}})
    assert len(caught.value.problems) == 3


def test_zero_is_allowed_where_it_means_none() -> None:
    policy = parse_policy({"defaults": {"step_retries": 0, "catchup_window_seconds": 0}})
    assert policy.defaults.step_retries == 0 and policy.defaults.catchup_window_seconds == 0


def test_tenant_rules_extend_and_override_the_global_ones() -> None:
    own = {"name": "chatty-flow", "metric": "messages", "subject": "flow", "window": "1m", "max": 1}
    extra = {"name": "mine", "metric": "bytes", "subject": "user", "window": "1h", "max": 10}
    policy = parse_policy({"tenants": {"acme": {"rules": [own, extra]}}})
    rules = {rule.name: rule for rule in policy.rules_for("acme")}
    assert rules["chatty-flow"].max == 1  # the tenant's wins
    assert rules["mine"].subject == "user"
    assert set(rules) == {r.name for r in DEFAULT_RULES} | {"mine"}
    assert policy.rules_for("other") == DEFAULT_RULES


def test_rule_windows_and_penalty_durations_in_seconds() -> None:
    rule = Rule("r", "runs", "flow", "15m", 3)
    assert rule.window_seconds == 900
    penalties = parse_policy({"penalties": {"cooldown": "90s", "decay_after": "2h"}}).penalties
    assert penalties.cooldown_seconds == 90 and penalties.decay_after_seconds == 7200
    assert penalties.max_cooldown_seconds == 86400


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400), ("0.5h", 1800), (45, 45)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0s", "-1m", "1w", "m", "", True, 0, "1 h"])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "millicores"), [("100m", 100), ("0.5", 500), ("2", 2000), ("1500m", 1500)]
)
def test_cpu_quantities(text: str, millicores: int) -> None:
    assert cpu_millicores(text) == millicores


@pytest.mark.parametrize(
    ("text", "mib"), [("64Mi", 64), ("1Gi", 1024), ("512Ki", 0.5), ("1048576", 1.0)]
)
def test_memory_quantities(text: str, mib: float) -> None:
    assert memory_mib(text) == pytest.approx(mib)


# --------------------------------------------------------------------------- merging
NUMERIC = {
    "weight": st.floats(min_value=0.01, max_value=100),
    "max_concurrent_runs": st.integers(1, 1000),
    "start_rate_per_minute": st.floats(min_value=0.1, max_value=1e4),
    "max_waiting_runs": st.integers(1, 10**6),
    "max_run_seconds": st.integers(1, 10**6),
    "step_retries": st.integers(0, 50),
    "max_replicas_per_step": st.integers(1, 100),
    "overlap_policy": st.sampled_from(["skip", "buffer_one", "allow"]),
}


@given(
    defaults=st.fixed_dictionaries({}, optional=NUMERIC),
    tenant=st.fixed_dictionaries({}, optional=NUMERIC),
)
def test_a_tenant_gets_its_own_values_over_the_file_defaults_over_built_ins(
    defaults: dict[str, Any], tenant: dict[str, Any]
) -> None:
    policy = parse_policy({"defaults": copy.deepcopy(defaults), "tenants": {"t": tenant}})
    built_in = TenantLimits()
    merged = policy.tenant("t")
    for f in fields(TenantLimits):
        expected = tenant.get(f.name, defaults.get(f.name, getattr(built_in, f.name)))
        assert getattr(merged, f.name) == expected, f.name
    for f in fields(TenantLimits):
        assert getattr(policy.tenant("other"), f.name) == defaults.get(
            f.name, getattr(built_in, f.name)
        )


def test_fairness_defaults_and_keys() -> None:
    assert Policy().fairness.cost == "slot_seconds"  # usage-based unless the file says count
    fairness = parse_policy(
        {
            "fairness": {
                "cost": "dominant",
                "half_life": "20m",
                "max_wait": "90s",
                "default_run_seconds": 5,
                "capacity": {"cpu": "16", "memory": "64Gi", "network": "1Gi"},
            }
        }
    ).fairness
    assert (fairness.cost, fairness.half_life_seconds, fairness.max_wait_seconds) == (
        "dominant",
        1200.0,
        90.0,
    )
    assert fairness.default_run_seconds == 5
    assert (fairness.capacity.cpu_millicores, fairness.capacity.memory_mib) == (16000, 65536.0)
    assert fairness.capacity.network_bytes_per_second == 2**30
