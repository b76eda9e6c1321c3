"""knative/oih: the event-bus bridge's manifests agree with the bridge's code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from shared.interop import event_bus as bus

ROOT = Path(__file__).resolve().parents[2]


def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "knative" / "overlays" / "dev-oih")],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_one_trigger_per_outbound_type_goes_to_the_bridge() -> None:
    triggers = [
        d for d in rendered() if d["kind"] == "Trigger" and "bridge" in d["metadata"]["name"]
    ]
    assert sorted(d["spec"]["filter"]["attributes"]["type"] for d in triggers) == sorted(
        bus.OUTBOUND
    )
    assert {d["spec"]["subscriber"]["ref"]["name"] for d in triggers} == {"event-bus-bridge"}


def test_the_bridge_runs_the_bridge_command_with_its_secrets_by_reference_only() -> None:
    (service,) = [
        d
        for d in rendered()
        if d["kind"] == "Service" and d["metadata"]["name"] == "event-bus-bridge"
    ]
    template = service["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["command"][:2] == ["orchestrator", "bridge"]
    env = {item["name"]: item for item in container["env"]}
    for name in ("OIH_EVENT_BUS", "IAM_SERVICE_TOKEN", "ORCHESTRATOR_KEY"):
        assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], name
    assert "REDIS_URL" not in env  # the bridge holds no state
    scale = template["metadata"]["annotations"]
    assert scale["autoscaling.knative.dev/min-scale"] == "1"  # its consumer never scales away
    assert container["securityContext"]["runAsNonRoot"] is True
    sinks = [
        d
        for d in rendered()
        if d["kind"] == "SinkBinding" and d["spec"]["subject"]["name"] == "event-bus-bridge"
    ]
    assert len(sinks) == 1
